"""Evolutionary search: finds the exhaustive optimum, stays in budget, no duplicates, survives NaN, presets."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.problem import KEEP, Budget, Candidate, Problem, Slot
from layerbudget.search.evolution import CALIB, MIN_GENERATIONS, PRESETS, EvolutionSearcher
from layerbudget.search.registry import make_searcher

TWO = ("dense", "rtn-b4-g128")
SHAPES = ((64, 128), (128, 128), (64, 256))  # units of different sizes


def two_option_problem(seed: int) -> tuple[Problem, np.ndarray]:
    rng = np.random.default_rng(seed)
    slots = [Slot(f"s{i}", TWO, ((f"u{i}", SHAPES[i % 3]),), i) for i in range(12)]
    proxy = {(f"s{i}", TWO[1]): float(rng.uniform(0.1, 1.0)) for i in range(12)}
    return Problem(slots, proxy=proxy), rng.uniform(0.0, 0.5, size=11)


class PairScorer:
    """Proxy plus a penalty for every two neighbouring compressed slots (not additive)."""

    def __init__(self, problem: Problem, pair: np.ndarray, nan_if=None):
        self.problem, self.pair, self.nan_if = problem, pair, nan_if
        self.requests: list[tuple[Candidate, int | None, int]] = []

    def score(self, candidate: Candidate, windows: int | None = None, batch: int = 0) -> float:
        self.requests.append((candidate, windows, batch))
        if self.nan_if is not None and self.nan_if(candidate):
            return math.nan
        x = np.asarray(candidate) == 1
        return self.problem.proxy_score(candidate) + float(np.sum(self.pair * (x[:-1] & x[1:])))


SMALL = {"offspring": 8, "stages": [(2, 1), (1, 2)], "generations": 1000}
PRESET_STAGES = [(16, 1), (4, 8), (1, 64)]  # "quantization" at one window per 2048 tokens


def test_reaches_exhaustive_optimum_within_300_evaluations():
    budget = Budget.from_dict({"avg_bits": 9.0})
    hits = 0
    for seed in range(10):
        p, pair = two_option_problem(seed)
        scorer = PairScorer(p, pair)
        feasible = [c for c in itertools.product((0, 1), repeat=12) if p.satisfies(c, budget)]
        best = min(scorer.score(c) for c in feasible)
        searcher = make_searcher("evolution", p, budget, seed=seed, max_evaluations=300, **SMALL)
        out = run_search(searcher, InlineExecutor(scorer))
        assert len(out.evaluations) <= 300
        hits += scorer.score(out.result) <= best + 1e-12
    assert hits >= 9


def mixed_problem() -> Problem:
    """Two blocks with droppable attention/MLP sub-blocks, tied slots and several shapes."""
    opts = ("dense", "rtn-b2-g64", "rtn-b3-g64", "rtn-b4-g128", "magnitude-0.5+rtn-b4-g128")
    rng = np.random.default_rng(1)
    slots, proxy = [], {}
    for b in range(2):
        qkv = tuple((f"b{b}.{n}", (64, 128)) for n in "qkv")
        mlp = ((f"b{b}.up", (128, 64)), (f"b{b}.down", (64, 128)))
        slots.append(Slot(f"b{b}.attn", (KEEP, "drop"), qkv, b, is_subblock=True))
        slots.append(Slot(f"b{b}.qkv", opts, qkv, b, subblock=f"b{b}.attn"))
        slots.append(Slot(f"b{b}.mlp", (KEEP, "drop"), mlp, b, is_subblock=True))
        slots.append(Slot(f"b{b}.up", opts, mlp[:1], b, subblock=f"b{b}.mlp"))
        slots.append(Slot(f"b{b}.down", opts, mlp[1:], b, subblock=f"b{b}.mlp"))
    for s in slots:
        for o in s.options[1:]:
            proxy[(s.name, o)] = float(rng.uniform(0.1, 3.0))
    return Problem(slots, other_numel=100, proxy=proxy)


class Recorder(InlineExecutor):
    def __init__(self, scorer):
        super().__init__(scorer)
        self.batches = []

    def evaluate(self, requests):
        self.batches.append(list(requests))
        return super().evaluate(requests)


@pytest.mark.parametrize(
    "spec", [{"avg_bits": 3.6, "sparsity": 0.2}, {"bytes": 9000, "dropped": 1}, {"avg_bits": 4.0}]
)
def test_every_offspring_is_within_budget_and_never_repeated(spec):
    p, budget = mixed_problem(), Budget.from_dict(spec)
    rng = np.random.default_rng(0)

    class Noisy:
        def score(self, candidate, windows=None, batch=0):
            return p.proxy_score(candidate) + 0.1 * rng.normal()

    ex = Recorder(Noisy())
    s = make_searcher(
        "evolution", p, budget, seed=2, generations=30, offspring=6, stages=[(3, 1), (1, 4)], init="random"
    )
    run_search(s, ex)
    first_stage = []
    for batch in ex.batches:
        cands = [r.candidate for r in batch]
        assert len(set(cands)) == len(cands)  # one stage never asks a candidate twice
        assert len({(r.windows, r.batch) for r in batch}) == 1  # the parent is re-scored on the same batch
        for c in cands:
            assert p.canonical(c) == c and p.satisfies(c, budget), p.metrics(c)
        if batch[0].windows == 1:
            first_stage.extend(cands[:-1])  # offspring; the last request is the parent
    assert len(set(first_stage)) == len(first_stage)  # no offspring is ever evaluated again
    assert 1 <= s.generation <= 30  # it stops early once no unseen feasible offspring can be found


def test_nan_candidates_are_quarantined_and_search_goes_on():
    p, pair = two_option_problem(0)
    budget = Budget.from_dict({"avg_bits": 9.0})
    scorer = PairScorer(p, pair, nan_if=lambda c: c[0] == 0 and c[1] == 0)
    s = make_searcher("evolution", p, budget, seed=0, max_evaluations=200, **SMALL)
    out = run_search(s, InlineExecutor(scorer))
    assert s.nan_count == len(out.broken) > 0
    assert out.result not in s.quarantined
    assert math.isfinite(scorer.score(out.result))


def test_init_plan_is_checked_and_used():
    p, pair = two_option_problem(3)
    budget = Budget.from_dict({"avg_bits": 9.0})
    with pytest.raises(LayerbudgetError, match="init_candidate violates budget"):
        make_searcher("evolution", p, budget, init="plan", init_candidate=[0] * 12)
    with pytest.raises(LayerbudgetError, match="needs an init_candidate"):
        make_searcher("evolution", p, budget, init="plan")
    seed_plan = (0, 1, 1) * 4  # the small slots dense
    s = make_searcher(
        "evolution", p, budget, init="plan", init_candidate=list(seed_plan), generations=3, offspring=4
    )
    assert s.result() == seed_plan
    units = {u: p.slots[i].options[c] for i, c in enumerate(seed_plan) for u, _ in p.slots[i].units}
    assert make_searcher("evolution", p, budget, init="plan", init_candidate=units).result() == seed_plan
    with pytest.raises(LayerbudgetError, match="evolution.init must be one of 'uniform', 'random', 'plan', but got 'best'"):
        make_searcher("evolution", p, budget, init="best")


def test_uniform_init_is_the_best_fitting_uniform_with_its_slack_spent_by_the_proxy():
    p, _ = two_option_problem(0)
    budget = Budget.from_dict({"avg_bits": 9.0})
    start = make_searcher("evolution", p, budget).result()
    uniform = p.uniform("rtn-b4-g128")  # dense does not fit
    assert p.satisfies(start, budget) and p.proxy_score(start) < p.proxy_score(uniform)
    for i, c in enumerate(start):  # no single slot can still go dense within the budget
        if c == 1:
            assert not p.satisfies(start[:i] + (0,) + start[i + 1 :], budget)
    exact = Budget.from_dict({"avg_bits": p.metric(uniform, "avg_bits")})  # no slack: the uniform plan itself
    assert make_searcher("evolution", p, exact).result() == uniform


def test_presets_and_overrides():
    p, _ = two_option_problem(0)
    budget = Budget.from_dict({"avg_bits": 9.0})
    q = make_searcher("evolution", p, budget, preset="quantization")
    assert (q.generations, q.offspring, q.stages) == (150, 128, [(16, 1), (4, 8), (1, 64)])
    sp = make_searcher("evolution", p, budget, preset="sparsity")
    assert (sp.generations, sp.offspring, sp.stages) == (400, 64, [(8, 1), (2, 8), (1, 32)])
    fast = make_searcher("evolution", p, budget, preset="superfast", offspring=5, stages=[[2, 3], [1, 9]])
    assert (fast.generations, fast.offspring, fast.stages) == (400, 5, [(2, 3), (1, 9)])
    assert set(PRESETS) == {"quantization", "sparsity", "depth", "superfast"}
    with pytest.raises(LayerbudgetError, match="evolution.preset must be one of 'auto', .*but got 'fastest'"):
        make_searcher("evolution", p, budget, preset="fastest")
    with pytest.raises(LayerbudgetError, match="evolution.stages must be a non-empty list"):
        make_searcher("evolution", p, budget, stages=[(0, 2)])
    with pytest.raises(LayerbudgetError, match="evolution.offspring must be a positive integer, but got 0"):
        make_searcher("evolution", p, budget, offspring=0)


def depth_problem(n_blocks: int = 4) -> tuple[Problem, dict[str, float]]:
    rng = np.random.default_rng(5)
    slots, proxy = [], {}
    for b in range(n_blocks):
        for part in ("attn", "mlp"):
            sub = f"b{b}.{part}"
            slots.append(Slot(sub, (KEEP, "drop"), ((f"{sub}.w", (32, 64)),), b, is_subblock=True))
            slots.append(Slot(f"{sub}.w", ("dense",), ((f"{sub}.w", (32, 64)),), b, subblock=sub))
            proxy[(sub, "drop")] = float(rng.uniform(0.1, 1.0))
    return Problem(slots, proxy=proxy), proxy


def test_depth_preset_swaps_keep_the_drop_count_and_find_the_optimum():
    p, _ = depth_problem()
    budget = Budget.from_dict({"dropped": 3})
    subs = [i for i, s in enumerate(p.slots) if s.is_subblock]
    pair = np.random.default_rng(2).uniform(0, 0.8, size=len(subs) - 1)

    class Scorer:
        def score(self, candidate, windows=None, batch=0):
            x = np.asarray([candidate[i] == 1 for i in subs])
            return p.proxy_score(candidate) + float(np.sum(pair * (x[:-1] & x[1:])))

    s = make_searcher("evolution", p, budget, seed=1)
    assert s.preset == "depth" and s.generations == math.ceil(3 * 5 / 1.5) and s.stages == [(2, 1), (1, 16)]
    ex = Recorder(Scorer())
    out = run_search(s, ex)
    assert all(p.metric(r.candidate, "dropped") == 3 for b in ex.batches for r in b)
    best = min(
        Scorer().score(c)
        for c in (
            p.canonical([1 if i in set(d) else 0 for i in range(len(p.slots))])
            for d in itertools.combinations(subs, 3)
        )
    )
    assert Scorer().score(out.result) == pytest.approx(best)


def test_max_evaluations_is_a_hard_cap():
    p, pair = two_option_problem(1)
    budget = Budget.from_dict({"avg_bits": 9.0})
    for cap in (6, 37, 120):
        s = make_searcher("evolution", p, budget, max_evaluations=cap, preset="quantization")
        out = run_search(s, InlineExecutor(PairScorer(p, pair)))
        assert 0 < len(out.evaluations) <= cap
    assert isinstance(s, EvolutionSearcher)
    with pytest.raises(LayerbudgetError, match=r"cover one generation with one offspring \(6 evaluations"):
        make_searcher("evolution", p, budget, max_evaluations=5, preset="quantization")


def test_all_nan_is_a_clear_error():
    p, pair = two_option_problem(0)
    scorer = PairScorer(p, pair, nan_if=lambda c: True)
    s = make_searcher("evolution", p, Budget.from_dict({"avg_bits": 9.0}), generations=2, offspring=3)
    with pytest.raises(LayerbudgetError, match="every evolution candidate scored NaN"):
        run_search(s, InlineExecutor(scorer))


def test_random_baseline_is_best_of_n_distinct_feasible_candidates():
    p, budget = mixed_problem(), Budget.from_dict({"avg_bits": 3.6, "sparsity": 0.2})
    ex = Recorder(PairScorer(p, np.zeros(len(p.slots) - 1)))
    out = run_search(make_searcher("random", p, budget, seed=4, n=12), ex)
    cands = [r.candidate for r in ex.batches[0]]
    assert len(ex.batches) == 1 and len(set(cands)) == len(cands) == 12
    assert all(r.windows is None for r in ex.batches[0])  # the standard calibration set
    assert out.result == min(cands, key=p.proxy_score)
    with pytest.raises(LayerbudgetError, match="random.n must be a positive integer, but got 0"):
        make_searcher("random", p, budget, n=0)


def test_a_cap_alone_sizes_the_search_and_scores_on_the_standard_windows():
    p, pair = two_option_problem(2)
    budget = Budget.from_dict({"avg_bits": 9.0})
    s = make_searcher("evolution", p, budget, seed=0, max_evaluations=120)
    assert s.stages == [(1, CALIB)] and s.offspring == 120 // MIN_GENERATIONS and s.adaptive is not None
    ex = Recorder(PairScorer(p, pair))
    out = run_search(s, ex)
    asked = [r for b in ex.batches for r in b]
    assert len(asked) == len(out.evaluations) <= 120
    assert all(r.windows is None for r in asked)  # only the standard windows
    assert len({r.candidate for r in asked}) == len(asked)  # nothing asked twice, the parent included
    assert len({len(b) for b in ex.batches}) > 1  # the offspring count adapts
    # the parent only ever moves to a better plan, so the result is the best plan it scored
    assert s.result() == min((e for e in out.evaluations), key=lambda e: e.fitness).candidate
    explicit = make_searcher("evolution", p, budget, max_evaluations=120, offspring=8)
    assert explicit.stages == PRESET_STAGES and explicit.adaptive is None  # overrides keep the preset


def test_a_standard_window_stage_reuses_known_scores():
    p, pair = two_option_problem(4)
    budget = Budget.from_dict({"avg_bits": 9.0})
    s = make_searcher("evolution", p, budget, seed=1, generations=6, offspring=6, stages=[(2, 1), (1, 0)])
    scorer = PairScorer(p, pair)
    s.remember({s.parent: scorer.score(s.parent)})
    ex = Recorder(scorer)
    run_search(s, ex)
    calib = [r.candidate for b in ex.batches for r in b if r.windows is None]
    assert calib and len(set(calib)) == len(calib)  # each plan scored once on the standard windows
    assert all(len(b) <= 2 for b in ex.batches if b[0].windows is None)  # survivors only: the parent is known
    with pytest.raises(LayerbudgetError, match=r"windows >= 0"):
        make_searcher("evolution", p, budget, stages=[(1, -1)])


MIXED3 = ("rtn-b4-g64", "rtn-b2-g64", "magnitude-2:4+rtn-b4-g64")


def trade_problem() -> tuple[Problem, Candidate, Candidate, Budget]:
    """Eight equal slots under a bits and a sparsity constraint; the optimum trades the options of slots
    0 and 7 of the start plan (4-bit <-> 2:4 + 4-bit: two levels apart in the level order)."""
    slots = [Slot(f"s{i}", MIXED3, ((f"u{i}", (64, 128)),), i) for i in range(8)]
    proxy = {(f"s{i}", o): 0.1 * k for i in range(8) for k, o in enumerate(MIXED3)}
    p = Problem(slots, proxy=proxy)
    start, best = (0, 2, 0, 2, 0, 2, 0, 2), (2, 2, 0, 2, 0, 2, 0, 0)
    m = p.metrics(start)
    return p, start, best, Budget.from_dict({"avg_bits": m["avg_bits"], "sparsity": 3 / 16})


def test_exchange_switch_trades_options_only_under_several_constraints():
    from layerbudget.search.feasible import FeasibleSpace

    p, start, best, budget = trade_problem()
    assert p.satisfies(best, budget) and p.metrics(best) == p.metrics(start)
    space = FeasibleSpace(p, budget)
    assert space.swaps and space.rank[0][2] - space.rank[0][0] == 2  # two levels apart
    rng = np.random.default_rng(0)
    children = {space.mutate(start, rng) for _ in range(3000)}
    assert best in children
    assert all(c is None or p.satisfies(c, budget) for c in children)
    one = FeasibleSpace(p, Budget.from_dict({"avg_bits": p.metrics(start)["avg_bits"]}))
    assert not one.swaps  # one constraint: the level order holds every trade-off


class TradeScorer:
    """``start`` is a local optimum: every other plan scores worse, except ``best``."""

    def __init__(self, start: Candidate, best: Candidate):
        self.start, self.best = start, best

    def score(self, candidate, windows=None, batch=0):
        return 0.0 if candidate == self.best else 1.0 if candidate == self.start else 2.0


def test_evolution_finds_a_trade_the_level_switches_miss(monkeypatch):
    from layerbudget.search import feasible

    p, start, best, budget = trade_problem()

    def found() -> int:
        hits = 0
        for seed in range(5):
            s = make_searcher("evolution", p, budget, seed=seed, init="plan", init_candidate=start, max_evaluations=150)
            hits += run_search(s, InlineExecutor(TradeScorer(start, best))).result == best
        return hits

    assert found() == 5
    monkeypatch.setattr(feasible, "EXCHANGE", 0.0)
    assert found() == 0  # without exchanges the trade takes four level moves in one child


def six_slot_problem() -> tuple[Problem, Budget, PairScorer]:
    rng = np.random.default_rng(3)
    slots = [Slot(f"s{i}", TWO, ((f"u{i}", SHAPES[i % 3]),), i) for i in range(6)]
    p = Problem(slots, proxy={(f"s{i}", TWO[1]): float(rng.uniform(0.1, 1.0)) for i in range(6)})
    return p, Budget.from_dict({"avg_bits": 11.0}), PairScorer(p, rng.uniform(0.0, 0.5, size=5))


def test_when_every_neighbour_was_seen_offspring_come_from_chained_mutations():
    p, budget, _ = six_slot_problem()
    s = make_searcher("evolution", p, budget, seed=0, max_evaluations=200)
    rng = np.random.default_rng(1)
    near = {c for _ in range(3000) if (c := s.space.mutate(s.parent, rng)) is not None} - {s.parent}
    s.remember(dict.fromkeys(near, 9.0))  # the parent's neighbours are all known (and worse)
    pool = s._offspring()
    assert pool and not set(pool) & near and s.widened >= 2
    assert all(p.satisfies(c, budget) for c in pool)


def test_search_ends_when_no_unseen_plan_is_left():
    p, budget, scorer = six_slot_problem()
    feasible = [c for c in itertools.product((0, 1), repeat=6) if p.satisfies(c, budget)]
    s = make_searcher("evolution", p, budget, seed=0, max_evaluations=1000)
    out = run_search(s, InlineExecutor(scorer))
    assert len({e.candidate for e in out.evaluations}) == len(out.evaluations) <= len(feasible) < 1000
    assert scorer.score(out.result) == min(scorer.score(c) for c in feasible)
