"""Synthetic search problems of any size, for testing and benchmarking searchers and solvers."""

from __future__ import annotations

import numpy as np

from layerbudget.options import parse_option
from layerbudget.problem import Problem, Slot

LEVELS = [f"rtn-b{b}-g{g}" for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128)] + ["magnitude-2:4", "magnitude-2:4+rtn-b4-g64"]


def synthetic_problem(units: int, options: int, seed: int = 0) -> Problem:
    """``units`` slots of varied shapes with ``options`` options each (``dense`` first, then levels of
    :data:`LEVELS`) and a random proxy that falls as an option's bits per weight rise."""
    rng = np.random.default_rng(seed)
    names = ("dense", *LEVELS[: options - 1])
    shapes = [(512, 512), (1024, 512), (512, 1024), (2048, 512), (512, 2048)]
    slots, proxy = [], {}
    for i in range(units):
        shape = shapes[i % len(shapes)]
        slots.append(Slot(f"u{i}", names, ((f"u{i}", shape),), block=i // 7))
        sens = rng.lognormal(0.0, 1.0)
        for o in names[1:]:
            bits = parse_option(o).cost_bits(shape) / (shape[0] * shape[1])
            proxy[(f"u{i}", o)] = sens * 2.0 ** (-bits) * (1 + 0.1 * rng.random())
    return Problem(slots, proxy=proxy)
