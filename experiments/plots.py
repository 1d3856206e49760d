"""Plots of run directories: Pareto frontiers of fitness vs cost, and a per-layer heatmap of plans.

- :func:`pareto_front` — indices of the non-dominated (cost, value) points, both minimised;
- :func:`plot_pareto` — for every searcher of every run: calibration fitness of every evaluated
  candidate (``candidates.parquet``) and the held-out measure of each chosen plan on every
  evaluation text (``summary.csv``: ``heldout``, ``heldout:<text>``) vs each cost (``avg_bits``,
  ``bytes``, any ``latency:*`` column); dominated points faint, the frontier a step line, chosen
  plans with ±1 standard-error bars where the summary has them;
- :func:`plot_plan_heatmap` — units × plans (budget, searcher), colour = bits per weight of the
  option, ``dense`` and ``drop`` drawn distinctly.

Figures are written atomically (rendered in memory, then temp file + rename) with the Agg backend.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from layerbudget.errors import LayerbudgetError
from layerbudget.options import DENSE, DENSE_BITS, DROP, parse_option
from layerbudget.plan import Plan
from layerbudget.storage import atomic_write_bytes

FITNESS_COSTS = ("avg_bits", "bytes")
COST_LABELS = {"avg_bits": "average bits per weight (metadata included)", "bytes": "model size (MB)"}
NOMINAL_K = 4096  # columns of the nominal weight on which the heatmap prices an option


def pareto_front(points: Sequence[Sequence[float]] | np.ndarray) -> list[int]:
    """Indices of the non-dominated points of ``points: [P, 2]`` (cost, value), both minimised.

    A point is dominated when another is no worse in both coordinates and better in one. Of equal
    points only the first is kept; points with a NaN or infinite coordinate are ignored. The
    indices come sorted by increasing cost (so values strictly decrease along them).
    """
    arr = np.asarray(points, dtype=float).reshape(-1, 2) if len(points) else np.zeros((0, 2))
    finite = np.flatnonzero(np.isfinite(arr).all(axis=1))
    order = sorted(finite, key=lambda i: (arr[i, 0], arr[i, 1], i))
    front: list[int] = []
    best = math.inf
    for i in order:
        if arr[i, 1] < best:
            front.append(int(i))
            best = arr[i, 1]
    return front


# ----- reading run directories ---------------------------------------------------------------------
def _read_run(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not run_dir.is_dir():
        raise LayerbudgetError(f"run directory {str(run_dir)!r} does not exist")
    missing = [n for n in ("candidates.parquet", "summary.csv") if not (run_dir / n).is_file()]
    if missing:
        raise LayerbudgetError(f"{str(run_dir)!r} is not a finished run directory (no {', '.join(missing)})")
    cands = pd.read_parquet(run_dir / "candidates.parquet")
    summary = pd.read_csv(run_dir / "summary.csv")
    if "windows" in cands.columns:  # staged searches score some candidates on fewer, fresh windows
        cands = cands[cands["windows"] == -1]
    return cands, summary


def cost_columns(frames: Sequence[pd.DataFrame]) -> list[str]:
    """``avg_bits``, ``bytes`` and every ``latency:*`` column found in any frame."""
    latency = sorted({c for f in frames for c in f.columns if str(c).startswith("latency:")})
    return [c for c in FITNESS_COSTS if any(c in f.columns for f in frames)] + latency


def _scale(col: str, values: pd.Series) -> np.ndarray:
    v = values.to_numpy(dtype=float)
    return v / 1e6 if col == "bytes" else v


def _save(fig: object, out: Path, *, sibling: bool = False) -> list[Path]:
    """Save ``fig`` to ``out`` (with ``sibling``, also as ``.svg`` next to a ``.png`` and vice versa)."""
    import matplotlib.pyplot as plt

    targets = [out]
    if sibling and out.suffix.lower() in (".png", ".svg"):
        targets.append(out.with_suffix(".svg" if out.suffix.lower() == ".png" else ".png"))
    try:
        for path in targets:
            buf = io.BytesIO()
            fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=130, bbox_inches="tight")  # type: ignore[attr-defined]
            atomic_write_bytes(path, buf.getvalue())
    finally:
        plt.close(fig)  # type: ignore[arg-type]
    return targets


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


# ----- Pareto frontiers ----------------------------------------------------------------------------
def _draw_front(ax, x: np.ndarray, y: np.ndarray, style: dict) -> None:
    """Dominated points faint, the frontier as a step line with solid markers."""
    front = pareto_front(np.column_stack([x, y]))
    dominated = np.setdiff1d(np.arange(len(x)), front)
    color, marker = style["color"], style["marker"]
    if len(dominated):
        ax.scatter(x[dominated], y[dominated], s=14, color=color, alpha=0.25, marker=marker, linewidths=0)
    if front:
        fx, fy = x[front], y[front]
        ax.step(fx, fy, where="post", color=color, linestyle=style["linestyle"], linewidth=1.6, alpha=0.9)
        ax.scatter(fx, fy, s=32, color=color, marker=marker, edgecolors="white", linewidths=0.6, zorder=3)


def _error_bars(ax, x: np.ndarray, y: np.ndarray, se: np.ndarray | None, style: dict) -> None:
    """Standard-error bars (±1 SE) on the chosen plans."""
    if se is None:
        return
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(se)
    if ok.any():
        ax.errorbar(x[ok], y[ok], yerr=se[ok], fmt="none", ecolor=style["color"], elinewidth=1.0, capsize=3,
                    alpha=0.8, zorder=2)


def heldout_columns(summaries: Sequence[pd.DataFrame]) -> list[str]:
    """``heldout`` and every ``heldout:<text>`` column found in any summary, in order of appearance."""
    cols = [c for f in summaries for c in f.columns if c == "heldout" or str(c).startswith("heldout:")]
    return [c for c in dict.fromkeys(cols) if not str(c).endswith("_se")]


def _fitness_name(run_dir: Path) -> str:
    try:
        return str(Plan.load(run_dir / "plan.json").provenance.get("fitness") or "fitness")
    except LayerbudgetError:
        return "fitness"


def plot_pareto(run_dirs: Sequence[str | Path], out: str | Path, *, names: Sequence[str] | None = None) -> list[Path]:
    """Write :func:`pareto_figure` to ``out`` (and its ``.png``/``.svg`` sibling); returns the written files."""
    return _save(pareto_figure(run_dirs, names=names), Path(out), sibling=True)


def pareto_figure(run_dirs: Sequence[str | Path], *, names: Sequence[str] | None = None):
    """Pareto frontiers of every (run, searcher) of ``run_dirs`` in one matplotlib figure.

    Top row: calibration fitness of every evaluated candidate vs each cost; one row per evaluation
    text below: the held-out measure of each chosen plan vs the same costs, with ±1 standard-error
    bars. Lower is better everywhere. Runs are labelled
    by ``names`` (default: their directory names).
    """
    if not run_dirs:
        raise LayerbudgetError("plot needs at least one run directory")
    plt = _pyplot()
    from matplotlib.collections import PathCollection
    from matplotlib.lines import Line2D

    runs = [(Path(d), *_read_run(Path(d))) for d in run_dirs]
    if names is None:
        names = [r[0].resolve().name for r in runs]
        if len(set(names)) != len(names):  # same leaf name in different places: use the given paths
            names = [str(r[0]) for r in runs]
    elif len(names) != len(runs):
        raise LayerbudgetError(f"got {len(names)} names for {len(runs)} run directories")
    costs = cost_columns([f for _, c, s in runs for f in (c, s)])
    searchers = list(dict.fromkeys(s for _, c, summ in runs for s in summ["searcher"]))
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(searchers)}
    markers, linestyles = ["o", "s", "^", "D", "v", "P", "X"], ["-", "--", ":", "-."]
    fitness = " / ".join(dict.fromkeys(_fitness_name(r[0]) for r in runs))
    held = heldout_columns([summ for _, _, summ in runs])
    fig, axes = plt.subplots(1 + len(held), len(costs), figsize=(5.2 * len(costs), 4.0 * (1 + len(held))),
                             squeeze=False)
    legend: dict[str, dict] = {}
    for r, (name, (_, cands, summary)) in enumerate(zip(names, runs)):
        for searcher in dict.fromkeys(summary["searcher"]):
            style = {"color": colors[searcher], "marker": markers[r % len(markers)],
                     "linestyle": linestyles[r % len(linestyles)]}
            label = f"{name} / {searcher}" if len(runs) > 1 else searcher
            legend[label] = style
            sub = cands[cands["searcher"] == searcher]
            plans = summary[summary["searcher"] == searcher]
            for j, col in enumerate(costs):
                if col in sub.columns and len(sub):
                    _draw_front(axes[0, j], _scale(col, sub[col]), sub["fitness"].to_numpy(float), style)
                if col in plans.columns and "fitness_se" in plans.columns:
                    _error_bars(axes[0, j], _scale(col, plans[col]), plans["fitness"].to_numpy(float),
                                plans["fitness_se"].to_numpy(float), style)
                for i, h in enumerate(held, start=1):
                    if col in plans.columns and h in plans.columns:
                        x, y = _scale(col, plans[col]), plans[h].to_numpy(float)
                        _draw_front(axes[i, j], x, y, style)
                        se = plans[h + "_se"].to_numpy(float) if h + "_se" in plans.columns else None
                        _error_bars(axes[i, j], x, y, se, style)
    titles = [f"{fitness}, calibration (every candidate; bars: ±1 SE of the chosen plans)"]
    titles += [f"{fitness}, {'held-out' if h == 'heldout' else h} (chosen plans, ±1 SE)" for h in held]
    for j, col in enumerate(costs):
        for i, what in enumerate(titles):
            ax = axes[i, j]
            ax.set_xlabel(COST_LABELS.get(col, col))
            ax.set_ylabel(what)
            ys = [line.get_ydata() for line in ax.lines]
            ys += [c.get_offsets()[:, 1] for c in ax.collections if isinstance(c, PathCollection)]  # not error bars
            ys = np.concatenate([np.asarray(y, float) for y in ys]) if ys else np.zeros(0)
            ys = ys[np.isfinite(ys)]
            if len(ys) and ys.min() > 0 and ys.max() / ys.min() > 20:
                ax.set_yscale("log")
            _plain_numbers(ax)
            ax.grid(True, which="major", alpha=0.3)
    title = names[0] if len(runs) == 1 else f"{len(runs)} runs"
    fig.suptitle(f"Pareto frontiers of {title}: lower is better; faint points are dominated")
    fig.tight_layout()
    if legend:
        handles = [Line2D([], [], color=st["color"], marker=st["marker"], linestyle=st["linestyle"], label=label)
                   for label, st in legend.items()]
        fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 4), frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    return fig


def _plain_numbers(ax) -> None:
    """Linear axes label their ticks with the values themselves: no offset (``+2.883e1``), no ``1e-4`` factor."""
    from matplotlib.ticker import ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        formatter = axis.get_major_formatter()
        if isinstance(formatter, ScalarFormatter):
            formatter.set_useOffset(False)
            formatter.set_scientific(False)


# ----- plan heatmap --------------------------------------------------------------------------------
def option_bits_per_weight(option: str, k: int = NOMINAL_K) -> float:
    """Storage bits per weight of ``option`` on a nominal ``[128, k]`` weight (``dense``: 16, ``drop``: 0)."""
    opt = parse_option(option)
    if opt.is_dense:
        return float(DENSE_BITS)
    if opt.is_drop:
        return 0.0
    if opt.group_size is not None and k % opt.group_size:
        k = opt.group_size * 32
    if opt.pattern == "2:4" and k % 4:
        k *= 4
    return opt.cost_bits((128, k)) / (128 * k)


METHOD_LETTERS = {"rtn": "R", "gptq": "G", "magnitude": "M", "wanda": "W", "sparsegpt": "S"}
LABEL_KEY = "R/G: RTN/GPTQ bits/group · M/W/S: magnitude/Wanda/SparseGPT sparsity · D: dense"


def _short(option: str) -> str:
    """Short cell label: ``R4/128``, ``G3/ch``, ``M2:4``, ``W.5``, ``S2:4+G4/64``, ``D`` (dense)."""
    if option == DENSE:
        return "D"
    if option == DROP:
        return ""
    parts = []
    for part in option.split("+"):
        method, _, rest = part.partition("-")
        m = re.match(r"^b(\d+)-g(\d+|ch)$", rest)
        value = f"{m[1]}/{m[2]}" if m else rest.removeprefix("0")
        parts.append(METHOD_LETTERS.get(method, method[:1].upper()) + value)
    return "+".join(parts)


def _run_plans(run_dir: Path) -> list[tuple[str, Plan]]:
    """(column label, plan) for every plan of the run, by budget index then searcher order."""
    plans_dir = run_dir / "plans"
    found: list[tuple[int, int, str, Plan]] = []
    if plans_dir.is_dir():
        order: dict[str, int] = {}
        if (run_dir / "summary.csv").is_file():
            order = {s: i for i, s in enumerate(dict.fromkeys(pd.read_csv(run_dir / "summary.csv")["searcher"]))}
        for path in plans_dir.glob("*.json"):
            m = re.match(r"^(?P<s>.+)-b(?P<b>\d+)$", path.stem)
            plan = Plan.load(path)
            b = int(m["b"]) if m else 0
            found.append((b, order.get(plan.searcher, len(order)), path.stem, plan))
    if not found and (run_dir / "plan.json").is_file():
        plan = Plan.load(run_dir / "plan.json")
        found.append((0, 0, plan.searcher or "plan", plan))
    if not found:
        raise LayerbudgetError(f"{str(run_dir)!r} has no plans (plan.json or plans/*.json)")
    found.sort(key=lambda t: (t[0], t[1], t[2]))
    return [(f"{p.searcher or stem}\n{_budget_label(p)}", p) for _, _, stem, p in found]


def _budget_label(plan: Plan) -> str:
    return ", ".join(f"{k}≤{v:g}" if k in ("avg_bits", "bytes") else f"{k}≥{v:g}" for k, v in plan.budget.items())


def plot_plan_heatmap(run_dir: str | Path, out: str | Path, *, name: str | None = None) -> list[Path]:
    """Write :func:`heatmap_figure` to ``out``; returns the written files."""
    return _save(heatmap_figure(run_dir, name=name), Path(out))


def heatmap_figure(run_dir: str | Path, *, name: str | None = None):
    """Heatmap of the chosen option of every unit (rows) in every plan of a run (columns), as a matplotlib figure.

    Column labels (searcher and budget) stand upright under the columns, so neighbours never overlap.
    """
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch, Rectangle

    plt = _pyplot()
    run_dir = Path(run_dir)
    columns = _run_plans(run_dir)
    units = list(columns[0][1].units)
    for _, plan in columns:
        if list(plan.units) != units:
            raise LayerbudgetError(f"plans of {str(run_dir)!r} name different units; cannot draw one heatmap")
    options = np.array([[plan.units[u] for _, plan in columns] for u in units], dtype=object)  # [U, P]
    bpw = np.vectorize(option_bits_per_weight, otypes=[float])(options)
    special = (options == DENSE) | (options == DROP)
    compressed = bpw[~special]
    vmax = max(8.5, float(compressed.max())) if compressed.size else 8.5
    norm = Normalize(vmin=min(1.0, float(compressed.min()) if compressed.size else 1.0), vmax=vmax)
    n_units, n_plans = options.shape
    fig, ax = plt.subplots(figsize=(1.6 + 1.25 * n_plans, 1.4 + 0.2 * n_units))
    image = ax.imshow(np.where(special, np.nan, bpw), cmap="viridis", norm=norm, aspect="auto",
                      interpolation="nearest")
    for (i, j), opt in np.ndenumerate(options):
        if opt == DENSE:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#d9d9d9", edgecolor="none"))
        elif opt == DROP:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white", edgecolor="#b22222",
                                   hatch="xxx", linewidth=0))
        if n_units * n_plans <= 1200:
            value = bpw[i, j]
            dark = not special[i, j] and norm(value) < 0.6
            ax.text(j, i, _short(opt), ha="center", va="center", fontsize=6.5,
                    color="white" if dark else "black")
    prefix = _common_prefix(units)
    ax.set_yticks(range(n_units), [u[len(prefix):] for u in units], fontsize=7)
    ax.set_xticks(range(n_plans), [label.replace("\n", " ") for label, _ in columns], fontsize=8, rotation=90)
    ax.set_xticks(np.arange(-0.5, n_plans), minor=True)
    ax.set_yticks(np.arange(-0.5, n_units), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label(f"bits per weight (metadata included, nominal K={NOMINAL_K})")
    ax.legend(handles=[Patch(facecolor="#d9d9d9", label="dense (16 bits)"),
                       Patch(facecolor="white", edgecolor="#b22222", hatch="xxx", label="dropped")],
              loc="upper left", bbox_to_anchor=(1.0 + 0.9 / max(n_plans, 1), 1.0), frameon=False, fontsize=8)
    ax.set_ylabel(f"unit ({prefix}…)" if prefix else "unit")
    ax.set_xlabel(LABEL_KEY, fontsize=8)
    ax.set_title(f"plans of {name or run_dir.resolve().name}")
    with warnings.catch_warnings():  # the legend sits outside the axes; the tight bounding box at save keeps it
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    return fig


def _common_prefix(names: Sequence[str]) -> str:
    """The longest common dotted prefix of ``names`` (up to and including a dot)."""
    if len(names) < 2:
        return ""
    first, last = min(names), max(names)
    i = 0
    while i < min(len(first), len(last)) and first[i] == last[i]:
        i += 1
    return first[: first.rfind(".", 0, i) + 1] if "." in first[:i] else ""


def write_run_plots(run_dir: str | Path, *, name: str | None = None) -> list[Path]:
    """``pareto.png``/``pareto.svg`` and ``plan_heatmap.png`` in ``run_dir``; returns the written files.

    ``name`` labels the run (default: the directory name; the runner passes the final name while it
    writes into a temporary directory).
    """
    run_dir = Path(run_dir)
    names = None if name is None else [name]
    return [*plot_pareto([run_dir], run_dir / "pareto.png", names=names),
            *plot_plan_heatmap(run_dir, run_dir / "plan_heatmap.png", name=name)]
