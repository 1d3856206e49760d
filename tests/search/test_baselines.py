"""Baselines: ShortGPT drops the lowest-influence sub-blocks, SLEB matches a brute-force greedy, OWL's
outlier-weighted allocation (lower sparsity for high-outlier blocks, λ = 0 is uniform); error cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.options import parse_option
from layerbudget.problem import INACTIVE, KEEP, Budget, Candidate, Problem, Slot
from layerbudget.search.registry import make_searcher

DEPTH_OPTIONS = ("dense", "rtn-b4-g128", "rtn-b2-g64")


def depth_problem(
    n_blocks: int = 4, options: tuple[str, ...] = DEPTH_OPTIONS, free_numel: int = 0
) -> Problem:
    """Blocks of an attention (tied q/k/v + o) and an MLP (tied gate/up) sub-block; optionally one
    unit slot outside every sub-block (``free_numel`` weights in a [free_numel // 128, 128] weight)."""
    slots = []
    for b in range(n_blocks):
        attn, mlp = f"b{b}.attn", f"b{b}.mlp"
        qkv = tuple((f"b{b}.{n}", (64, 128)) for n in "qkv")
        o = ((f"b{b}.o", (32, 256)),)
        gate_up = ((f"b{b}.gate", (64, 128)), (f"b{b}.up", (64, 128)))
        slots.append(Slot(attn, (KEEP, "drop"), qkv + o, b, is_subblock=True))
        slots.append(Slot(mlp, (KEEP, "drop"), gate_up, b, is_subblock=True))
        slots.append(Slot(f"b{b}.qkv", options, qkv, b, subblock=attn))
        slots.append(Slot(f"b{b}.o", options, o, b, subblock=attn))
        slots.append(Slot(f"b{b}.gate_up", options, gate_up, b, subblock=mlp))
    if free_numel:
        slots.append(Slot("head", options, (("head", (free_numel // 128, 128)),), n_blocks))
    return Problem(slots, other_numel=1000)


def subs(p: Problem) -> list[int]:
    return [i for i, s in enumerate(p.slots) if s.is_subblock]


def dropped_set(p: Problem, cand: Candidate) -> set[str]:
    return set(p.assignment(cand)[1])


class FnScorer:
    """Scores candidates with a python function and records every request."""

    def __init__(self, fn):
        self.fn, self.seen = fn, []

    def score(self, candidate, windows=None, batch=0):
        self.seen.append((candidate, windows, batch))
        return self.fn(candidate)


def run(name: str, p: Problem, budget: dict, fn=lambda c: 0.0, **params):
    scorer = FnScorer(fn)
    searcher = make_searcher(name, p, Budget.from_dict(budget), **params)
    out = run_search(searcher, InlineExecutor(scorer))
    assert p.satisfies(out.result, searcher.budget)
    return searcher, out, scorer


def set_influence(p: Problem, values) -> dict[str, float]:
    bi = {p.slots[i].name: float(v) for i, v in zip(subs(p), values)}
    p.set_feature("block_influence", bi)
    return bi


# ----- ShortGPT ---------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_shortgpt_drops_exactly_the_k_lowest_influence_subblocks(k):
    p = depth_problem()
    bi = set_influence(p, np.random.default_rng(k).permutation(8) / 10 + 0.05)
    searcher, out, _ = run("shortgpt", p, {"dropped": k})
    assert dropped_set(p, out.result) == set(sorted(bi, key=bi.get)[:k])
    assert len(out.evaluations) == 1 and out.evaluations[0].candidate == out.result
    units, _ = p.assignment(out.result)
    assert {o for o in units.values()} <= {"dense", "drop"}  # units untouched


@pytest.mark.parametrize("budget", [{"sparsity": 0.4}, {"avg_bits": 7.0}, {"bytes": 150000}])
def test_shortgpt_drops_in_influence_order_only_until_the_budget_holds(budget):
    p = depth_problem()
    bi = set_influence(p, [0.5, 0.1, 0.7, 0.3, 0.2, 0.9, 0.4, 0.6])
    _, out, _ = run("shortgpt", p, budget)
    order = sorted(bi, key=bi.get)
    got = dropped_set(p, out.result)
    k = len(got)
    assert got == set(order[:k])
    fewer = p.from_assignment(
        {u: "dense" for s in p.slots if not s.is_subblock for u, _ in s.units}, order[: k - 1]
    )
    assert not p.satisfies(fewer, Budget.from_dict(budget))  # one drop fewer would not fit


def test_shortgpt_ties_go_to_the_earlier_subblock():
    p = depth_problem()
    set_influence(p, [0.2] * 8)
    _, out, _ = run("shortgpt", p, {"dropped": 3})
    assert dropped_set(p, out.result) == {"b0.attn", "b0.mlp", "b1.attn"}


def test_shortgpt_without_dense_keeps_the_least_compressed_option():
    p = depth_problem(options=("rtn-b2-g64", "rtn-b4-g128"))
    set_influence(p, range(8))
    _, out, _ = run("shortgpt", p, {"dropped": 2})
    units, dropped = p.assignment(out.result)
    assert dropped == ["b0.attn", "b0.mlp"]
    assert {o for o in units.values() if o != "drop"} == {"rtn-b4-g128"}


def test_shortgpt_errors():
    p = depth_problem()
    with pytest.raises(LayerbudgetError, match="block_influence"):
        make_searcher("shortgpt", p, Budget.from_dict({"dropped": 1}))
    bi = set_influence(p, range(8))
    p.set_feature("block_influence", {**bi, "b2.mlp": math.nan})
    with pytest.raises(LayerbudgetError, match="b2.mlp"):
        make_searcher("shortgpt", p, Budget.from_dict({"dropped": 1}))
    flat = Problem([Slot("u", DEPTH_OPTIONS, (("u", (64, 128)),), 0)])
    flat.set_feature("block_influence", {"u": 0.1})
    with pytest.raises(LayerbudgetError, match="has none"):
        make_searcher("shortgpt", flat, Budget.from_dict({"avg_bits": 4.0}))
    # a large unit outside every sub-block: 4 bits are reachable with rtn-b2, but not by dropping
    big = depth_problem(free_numel=4 * 49152)
    set_influence(big, range(8))
    with pytest.raises(LayerbudgetError, match="dropping sub-blocks alone"):
        make_searcher("shortgpt", big, Budget.from_dict({"avg_bits": 4.0}))
    with pytest.raises(LayerbudgetError, match=r"unknown parameter\(s\) \w+\.\w+; known: none"):
        make_searcher("shortgpt", p, Budget.from_dict({"dropped": 1}), block=True)


# ----- SLEB -------------------------------------------------------------------------------------
def depth_fitness(p: Problem, weights: dict[str, float], pair: float = 0.0):
    """Sum of per-sub-block costs of the dropped ones, plus ``pair`` per two neighbouring sub-blocks
    both dropped (non-additive), plus 0.01 per unit slot not at dense."""
    order = [p.slots[i].name for i in subs(p)]

    def fn(cand: Candidate) -> float:
        gone = dropped_set(p, cand)
        f = sum(weights[s] for s in gone)
        f += pair * sum(a in gone and b in gone for a, b in zip(order, order[1:]))
        f += 0.01 * sum(c not in (INACTIVE, 0) for s, c in zip(p.slots, cand) if not s.is_subblock)
        return f

    return fn


def brute_force_greedy(p: Problem, budget: Budget, fn) -> tuple[Candidate, list[Candidate]]:
    """Drop, one at a time, the kept sub-block whose removal scores lowest (ties: the earlier one)."""
    cur = list(p.uniform("dense"))
    asked = []
    while not p.satisfies(p.canonical(cur), budget):
        best = None
        for s in subs(p):
            if p.slots[s].options[cur[s]] == "drop":
                continue
            cand = list(cur)
            cand[s] = 1
            cand = p.canonical(cand)
            asked.append(cand)
            f = fn(cand)
            if not math.isnan(f) and (best is None or f < best[0]):
                best = (f, cand)
        cur = list(best[1])
    return p.canonical(cur), asked


@pytest.mark.parametrize("pair", [0.0, 0.6, -0.35], ids=["additive", "pair-penalty", "pair-bonus"])
@pytest.mark.parametrize("budget", [{"dropped": 3}, {"sparsity": 0.55}, {"avg_bits": 5.0}])
def test_sleb_equals_a_brute_force_greedy(pair, budget):
    p = depth_problem()
    rng = np.random.default_rng(7)
    weights = {p.slots[i].name: float(rng.uniform(0.1, 1.0)) for i in subs(p)}
    fn = depth_fitness(p, weights, pair)
    expected, asked = brute_force_greedy(p, Budget.from_dict(budget), fn)
    searcher, out, scorer = run("sleb", p, budget, fn)
    assert out.result == expected
    assert [e.candidate for e in out.evaluations] == asked
    assert all(w is None for _, w, _ in scorer.seen)  # the standard calibration windows
    assert set(searcher.dropped) == dropped_set(p, expected)


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_sleb_evaluation_count_and_ties_to_the_earlier_subblock(k):
    p = depth_problem()
    searcher, out, _ = run("sleb", p, {"dropped": k}, lambda c: 1.0)
    n = len(subs(p))
    assert len(out.evaluations) == sum(n - i for i in range(k))
    assert searcher.dropped == [p.slots[i].name for i in subs(p)[:k]]  # equal fitness: earliest first


def test_sleb_scores_the_start_once_when_no_drop_is_needed():
    p = depth_problem()
    _, out, _ = run("sleb", p, {"avg_bits": 16.0})
    assert len(out.evaluations) == 1 and out.result == p.uniform("dense")


def test_sleb_skips_and_counts_nan_candidates():
    p = depth_problem()
    weights = {p.slots[i].name: 1.0 + 0.1 * j for j, i in enumerate(subs(p))}
    weights["b2.attn"] = 0.0  # the best drop, but it breaks the model
    clean = depth_fitness(p, weights)
    fn = lambda c: math.nan if "b2.attn" in dropped_set(p, c) else clean(c)  # noqa: E731
    searcher, out, _ = run("sleb", p, {"dropped": 3}, fn)
    assert "b2.attn" not in dropped_set(p, out.result)
    assert searcher.dropped == ["b0.attn", "b0.mlp", "b1.attn"]
    assert searcher.nan_count == 3 == len(out.broken)  # one per round


def test_sleb_errors():
    p = depth_problem()
    with pytest.raises(LayerbudgetError, match="NaN"):
        run("sleb", p, {"dropped": 2}, lambda c: math.nan)
    flat = Problem([Slot("u", DEPTH_OPTIONS, (("u", (64, 128)),), 0)])
    with pytest.raises(LayerbudgetError, match="none"):
        make_searcher("sleb", flat, Budget.from_dict({"avg_bits": 4.0}))
    big = depth_problem(free_numel=4 * 49152)
    with pytest.raises(LayerbudgetError, match="dropping sub-blocks alone"):
        make_searcher("sleb", big, Budget.from_dict({"avg_bits": 4.0}))
    with pytest.raises(LayerbudgetError, match=r"unknown parameter\(s\) \w+\.\w+; known: none"):
        make_searcher("sleb", p, Budget.from_dict({"dropped": 1}), rounds=2)


# ----- OWL --------------------------------------------------------------------------------------
WANDA = tuple(f"wanda-0.{i}" for i in range(1, 10))
OWL_OPTIONS = (
    "dense",
    "rtn-b4-g128",
    "rtn-b2-g100",
    "wanda-2:4",
    "wanda-0.5+rtn-b4-g100",
    *WANDA,
    "sparsegpt-0.5",
    "sparsegpt-0.7",
)
OUTLIERS = (0.031, 0.004, 0.052, 0.017, 0.015, 0.075)  # per block; block 5 has the most outliers
SPLIT = (0.003, 0.0004, -0.005, 0.002, -0.0024, 0.001)  # per block: how the ratio differs between its slots


def owl_problem(outliers=OUTLIERS, options=OWL_OPTIONS, drop: bool = False) -> Problem:
    """One block per outlier ratio: a tied pair and a single unit (K = 100, so wanda-0.x is exact).

    The two slots of a block differ in size and ratio; their numel-weighted mean ratio is the block's."""
    slots, ratio = [], {}
    for b, (d, t) in enumerate(zip(outliers, SPLIT)):
        sub = f"b{b}.mlp" if drop else None
        pair = ((f"b{b}.q", (30, 100)), (f"b{b}.k", (30, 100)))
        single = ((f"b{b}.o", (80, 100)),)
        if drop:
            slots.append(Slot(sub, (KEEP, "drop"), pair + single, b, is_subblock=True))
        slots.append(Slot(f"b{b}.qk", options, pair, b, subblock=sub))
        slots.append(Slot(f"b{b}.o", options, single, b, subblock=sub))
        ratio[f"b{b}.qk"], ratio[f"b{b}.o"] = d - 8 * t, d + 6 * t  # 6000 and 8000 weights: mean d
    p = Problem(slots, other_numel=500)
    p.set_feature("outlier_ratio", ratio)
    return p


def block_sparsity(p: Problem, cand: Candidate) -> list[float]:
    out: dict[int, list[float]] = {}
    for s, c in zip(p.slots, cand):
        if not s.is_subblock:
            opt = parse_option(s.options[c])
            out.setdefault(s.block, []).append(opt.sparsity or 0.0)
    return [float(np.mean(v)) for _, v in sorted(out.items())]


def reference_owl(p: Problem, budget: Budget, lam: float, outliers=OUTLIERS) -> Candidate:
    """OWL's rule written out: targets S + mean(N) - N_l, nearest level (ties up), smallest S that fits
    (S on a fine grid)."""
    d = np.asarray(outliers)
    n = 2 * lam * (d - d.min()) / (d.max() - d.min())
    levels = np.array([0.0] + [float(o.split("-")[1]) for o in WANDA])
    names = ["dense", *WANDA]
    shifts = np.linspace(0.0, 1.2, 24001)
    targets = shifts[:, None] + n.mean() - n[None, :]  # [shift, block]
    dist = np.abs(levels[None, None, ::-1] - targets[:, :, None])  # reversed: argmin ties go up
    level = len(levels) - 1 - np.argmin(dist, axis=2)  # [shift, block]
    fits = np.ones(len(shifts), dtype=bool)
    for c in budget.constraints:
        raw = sum(
            np.asarray([p.coef[c.metric][i][s.options.index(o)] for o in names])[level[:, s.block]]
            for i, s in enumerate(p.slots)
            if not s.is_subblock
        )
        value = raw / p.unit_numel if c.metric in ("avg_bits", "sparsity") else raw + 2 * p.other_numel
        fits &= np.array([c.holds(float(v)) for v in value])
    first = int(np.argmax(fits))
    assert fits[first], "no shift fits"
    cand = [
        s.options.index(KEEP) if s.is_subblock else s.options.index(names[level[first, s.block]])
        for s in p.slots
    ]
    return p.canonical(cand)


@pytest.mark.parametrize("lam", [0.02, 0.05, 0.08, 0.12, 0.3])
@pytest.mark.parametrize(
    "budget", [{"sparsity": 0.5}, {"sparsity": 0.37}, {"avg_bits": 9.5}, {"bytes": 100000}]
)
def test_owl_allocation_follows_the_outlier_rule(lam, budget):
    p = owl_problem()
    searcher, out, _ = run("owl", p, budget, lambdas=[lam])
    assert out.result == reference_owl(p, Budget.from_dict(budget), lam)
    assert np.allclose(searcher.outliers, OUTLIERS)  # D_l: numel-weighted mean over the block's slots
    offsets = searcher.block_offsets(lam)
    assert math.isclose(offsets.max() - offsets.min(), 2 * lam) and abs(offsets.mean()) < 1e-12
    assert int(np.argmin(offsets)) == int(np.argmax(OUTLIERS))
    sparsity = block_sparsity(p, out.result)
    by_outliers = [sparsity[b] for b in np.argsort(OUTLIERS)]
    assert by_outliers == sorted(by_outliers, reverse=True)  # more outliers, never more sparsity
    units, _ = p.assignment(out.result)
    assert set(units.values()) <= {"dense", *WANDA}  # wanda levels only (the first sparsity method)


def test_owl_gives_high_outlier_blocks_lower_sparsity():
    p = owl_problem()
    _, out, _ = run("owl", p, {"sparsity": 0.5}, lambdas=[0.12])
    sparsity = block_sparsity(p, out.result)
    assert sparsity[int(np.argmax(OUTLIERS))] < 0.5 < sparsity[int(np.argmin(OUTLIERS))]
    assert abs(p.metric(out.result, "sparsity") - 0.5) < 0.05


@pytest.mark.parametrize("target, level", [(0.5, "wanda-0.5"), (0.45, "wanda-0.5"), (0.52, "wanda-0.6")])
def test_owl_lambda_zero_is_the_uniform_allocation(target, level):
    p = owl_problem()
    _, out, _ = run("owl", p, {"sparsity": target}, lambdas=[0.0])
    assert out.result == p.uniform(level)


def test_owl_keeps_the_best_lambda_by_fitness():
    p = owl_problem()
    lambdas = [0.0, 0.05, 0.12, 0.3]
    target = make_searcher("owl", p, Budget.from_dict({"sparsity": 0.5}), lambdas=lambdas).plans[0.12]
    searcher, out, _ = run(
        "owl", p, {"sparsity": 0.5}, lambda c: 0.0 if c == target else 1.0, lambdas=lambdas
    )
    assert out.result == target and searcher.lambda_of(out.result) == 0.12
    assert len(out.evaluations) == len(set(searcher.plans.values())) > 1  # one evaluation per distinct plan
    _, tie, _ = run("owl", p, {"sparsity": 0.5}, lambda c: 1.0, lambdas=[0.3, 0.0])
    assert tie.result == searcher.plans[0.3]  # equal fitness: the earlier λ


def test_owl_method_picks_the_sparsity_options():
    p = owl_problem()
    _, out, _ = run("owl", p, {"sparsity": 0.55}, lambdas=[0.08], method="sparsegpt")
    units, _ = p.assignment(out.result)
    assert set(units.values()) <= {"dense", "sparsegpt-0.5", "sparsegpt-0.7"}
    q = owl_problem(options=("dense", "magnitude-0.4", "magnitude-0.6", "wanda-0.5"))
    searcher = make_searcher("owl", q, Budget.from_dict({"sparsity": 0.5}))
    assert searcher.method == "magnitude"  # the first sparsity method in the slot options
    assert searcher.lambdas == (0.02, 0.05, 0.08, 0.12)


def test_owl_keeps_subblocks_and_is_deterministic():
    p = owl_problem(drop=True)
    a = run("owl", p, {"sparsity": 0.6}, lambda c: float(sum(c)))[1]
    b = run("owl", p, {"sparsity": 0.6}, lambda c: float(sum(c)))[1]
    assert a.result == b.result and [e.request for e in a.evaluations] == [e.request for e in b.evaluations]
    assert p.assignment(a.result)[1] == []


@pytest.mark.parametrize(
    "params, match",
    [
        ({"lambdas": []}, "lambdas"),
        ({"lambdas": [-0.1]}, "lambdas"),
        ({"lambdas": [0.6]}, "lambdas"),
        ({"lambdas": "0.1"}, "lambdas"),
        ({"lambdas": 0.1}, "lambdas"),
        ({"lambdas": [math.nan]}, "lambdas"),
        ({"lambdas": [True]}, "lambdas"),
        ({"method": "foo"}, "method"),
        ({"method": "magnitude"}, "offer only"),
        ({"m": 5}, r"unknown parameter\(s\) owl.m; known: lambdas, method"),
    ],
)
def test_owl_rejects_bad_parameters(params, match):
    with pytest.raises(LayerbudgetError, match=match):
        make_searcher("owl", owl_problem(), Budget.from_dict({"sparsity": 0.5}), **params)


def test_owl_errors():
    p = owl_problem()
    p.features.pop("outlier_ratio")
    with pytest.raises(LayerbudgetError, match="outlier_ratio"):
        make_searcher("owl", p, Budget.from_dict({"sparsity": 0.5}))
    p.set_feature("outlier_ratio", {s.name: 0.1 for s in p.slots if s.name != "b3.o"})
    with pytest.raises(LayerbudgetError, match="b3.o"):
        make_searcher("owl", p, Budget.from_dict({"sparsity": 0.5}))
    quant = owl_problem(options=("dense", "rtn-b4-g128", "wanda-2:4", "wanda-0.5+rtn-b4-g100"))
    with pytest.raises(LayerbudgetError, match="no slot offers"):
        make_searcher("owl", quant, Budget.from_dict({"avg_bits": 8.0}))
    with pytest.raises(LayerbudgetError, match="sparsity levels alone"):  # wanda-0.9 is 2.6 bits; rtn-b2 2.32
        make_searcher("owl", owl_problem(), Budget.from_dict({"avg_bits": 2.5}))
    with pytest.raises(LayerbudgetError, match="sparsity levels alone"):  # OWL drops nothing
        make_searcher("owl", owl_problem(drop=True), Budget.from_dict({"dropped": 1}))
