"""A small MiniLM experiment (every kernel format, a drop, two budgets) shared by the output tests."""

from __future__ import annotations

# few short windows: a MiniLM run in seconds
SMALL_DATA = """[data]
seq_len = 32
calib_windows = 4
heldout_windows = 4
batch_size = 4
"""


def small_run_toml(name: str, budgets: tuple[float, ...] = (4.0, 6.0)) -> str:
    """TOML text of the small experiment, named ``name``, with one ``avg_bits`` budget per entry of ``budgets``."""
    tables = "".join(f"[[budget]]\navg_bits = {bits}\n" for bits in budgets)
    return f"""
name = "{name}"
{SMALL_DATA}[options]
names = ["rtn-b2-g64", "rtn-b4-g128", "rtn-b5-g128", "magnitude-0.5", "magnitude-2:4", "magnitude-2:4+rtn-b4-g64", "drop"]
{tables}[search]
searchers = ["uniform", "ilp"]
"""
