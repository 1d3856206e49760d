"""The evaluation engine: stitching, block-restart equals a naive full evaluation, fresh batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerbudget.data import build_token_sets
from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.engine import EngineStats, Evaluator
from layerbudget.evaluators.fitness import make_fitness
from layerbudget.model import load_model
from layerbudget.options import parse_options
from layerbudget.profiles.database import load_or_build_database
from layerbudget.profiles.profile import build_problem

OPTIONS = ["dense", "rtn-b2-g64", "rtn-b4-g128", "magnitude-0.5", "drop"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    adapter = load_model()
    tokens = build_token_sets(adapter.tokenizer, seq_len=32, calib_windows=4, heldout_windows=3, seed=0)
    db, _ = load_or_build_database(
        adapter, parse_options(OPTIONS), tmp_path_factory.mktemp("c"), progress=False
    )
    problem = build_problem(adapter, db, OPTIONS)
    ev = Evaluator(adapter, db, problem, tokens, make_fitness("auto", "encoder"), batch_size=3, stats=EngineStats())
    yield adapter, db, problem, tokens, ev
    adapter.restore()


@pytest.fixture(scope="module")
def other():
    """A second copy of the model for naive evaluation (the evaluator owns the first one)."""
    return load_model()


def naive(adapter, db, problem, cand, ids):
    """Swap every weight, run the full model, compare with a fresh dense pass."""
    adapter.restore()
    ref = adapter.forward(ids).float()
    units, dropped = problem.assignment(cand)
    for sb in dropped:
        adapter.drop(sb)
    for u, o in units.items():
        if o not in ("dense", "drop"):
            adapter.set_weight(u, db.weight(u, o))
    out = adapter.forward(ids).float()
    adapter.restore()
    return float((out - ref).pow(2).sum() / ref.pow(2).sum())


def random_candidate(problem, rng):
    return problem.canonical([int(rng.integers(len(s.options))) for s in problem.slots])


def test_problem_shape(setup):
    _, _, problem, _, _ = setup
    assert len(problem.slots) == 24 + 12  # tie groups + droppable sub-blocks
    assert sum(s.is_subblock for s in problem.slots) == 12


def test_dense_scores_zero_and_matches_naive(setup, other):
    _, db, problem, tokens, ev = setup
    adapter = other
    assert ev.score(problem.uniform("dense")) == 0.0
    rng = np.random.default_rng(0)
    for _ in range(6):
        cand = random_candidate(problem, rng)
        expect = naive(adapter, db, problem, cand, tokens.calib)
        assert ev.score(cand) == pytest.approx(expect, rel=1e-4, abs=1e-7)
        assert ev.heldout(cand) == pytest.approx(naive(adapter, db, problem, cand, tokens.heldout), rel=1e-4)


def test_only_late_block_changed_restarts_there(setup, other):
    adapter, db, problem, tokens, ev = setup
    cand = list(problem.uniform("dense"))
    last = max(i for i, s in enumerate(problem.slots) if not s.is_subblock)
    cand[last] = problem.slots[last].options.index("rtn-b2-g64")
    cand = problem.canonical(cand)
    assert ev.stitch(cand) == problem.slots[last].block == adapter.num_blocks - 1
    assert ev.score(cand) == pytest.approx(naive(other, db, problem, cand, tokens.calib), rel=1e-4)


def test_fresh_batches_are_deterministic_and_distinct(setup):
    _, _, problem, tokens, ev = setup
    cand = problem.uniform("rtn-b2-g64")
    a, b = ev.score(cand, windows=2, batch=1), ev.score(cand, windows=2, batch=1)
    c = ev.score(cand, windows=2, batch=2)
    assert a == b and a != c
    with pytest.raises(LayerbudgetError, match="windows"):
        ev.score(cand, windows=10**6, batch=3)


def test_restore_after_scoring_gives_dense_model(setup):
    adapter, _, problem, tokens, ev = setup
    ev.score(random_candidate(problem, np.random.default_rng(5)))
    adapter.restore()
    for u in adapter.units[:4]:
        w = adapter.model.get_submodule(u.name).weight
        assert torch.equal(w, adapter.dense_weight(u.name))


# ----- trace cache ---------------------------------------------------------------------------------
# The scores of the trace cache are compared with ``==``: a restart from a cached block input runs
# the same block modules with the same weights and the same other arguments on a bit-identical
# input (by induction, the tensor that the same blocks produced from the same dense input), and
# CPU kernels are deterministic for equal inputs and shapes. The naive reference below batches and
# reduces exactly as the engine does and runs the whole HF forward, whose encoder loop makes the
# same block calls, so it is bit-identical as well.


@pytest.fixture(scope="module")
def traced(setup):
    """A trace-cache engine and a dense-restart engine (``max_traces=0``), each on its own model."""
    _, db, problem, tokens, _ = setup
    fit = make_fitness("auto", "encoder")
    ev = Evaluator(load_model(), db, problem, tokens, fit, batch_size=3, stats=EngineStats())
    ev0 = Evaluator(load_model(), db, problem, tokens, fit, batch_size=3, max_traces=0, stats=EngineStats())
    yield ev, ev0
    ev.adapter.restore()
    ev0.adapter.restore()


def naive_exact(adapter, db, problem, fitness, cand, ids, batch_size=3):
    """Swap every weight and run the full model, batched and reduced exactly as the engine does."""
    batches = torch.split(ids, batch_size)
    adapter.restore()
    refs = [fitness.reference(adapter.forward(b)) for b in batches]
    units, dropped = problem.assignment(cand)
    for sb in dropped:
        adapter.drop(sb)
    for u, o in units.items():
        if o not in ("dense", "drop"):
            adapter.set_weight(u, db.weight(u, o))
    num = den = 0.0
    for b, ref in zip(batches, refs):
        n, d = fitness.partial(adapter.forward(b), ref)
        num, den = num + n, den + d
    adapter.restore()
    return num / den


def fresh_ids(tokens, windows, batch, data_seed=0):
    return tokens.fresh_calib(windows, np.random.default_rng([data_seed, batch, windows]))


def mutate(problem, cand, rng):
    """1-3 random slots changed (sub-block keep/drop included); re-activated slots get random options."""
    child = list(cand)
    for i in rng.choice(len(child), size=int(rng.integers(1, 4)), replace=False):
        child[i] = int(rng.integers(len(problem.slots[i].options)))
    return problem.canonical(
        [c if c >= 0 else int(rng.integers(len(problem.slots[i].options))) for i, c in enumerate(child)]
    )


def evolution_like(problem, rng, generations=3, offspring=8):
    """(candidate, windows, batch) requests: offspring then parent, staged on fresh windows."""
    parent = random_candidate(problem, rng)
    out = []
    for g in range(generations):
        pool = [mutate(problem, parent, rng) for _ in range(offspring)]
        for stage, windows in enumerate((1, 3)):
            out += [(c, windows, 10 * g + stage) for c in (*pool, parent)]
            pool = pool[: offspring // 4]
        parent = pool[0]
    return out


def test_traces_are_bit_identical_to_dense_restart_and_naive(setup, traced, other):
    _, db, problem, tokens, _ = setup
    ev, ev0 = traced
    fit = ev.fitness
    rng = np.random.default_rng(11)
    requests = evolution_like(problem, rng)
    requests += [(random_candidate(problem, rng), None, 0) for _ in range(12)]
    parent = random_candidate(problem, rng)
    for _ in range(12):  # a walk on the calibration set: each candidate a few slots from the last
        parent = mutate(problem, parent, rng)
        requests.append((parent, None, 0))
    assert any(problem.assignment(c)[1] for c, _, _ in requests)  # dropped sub-blocks are exercised
    before = (ev.stats.blocks_run, ev0.stats.blocks_run)
    for k, (cand, windows, batch) in enumerate(requests):
        got, want = ev.score(cand, windows, batch), ev0.score(cand, windows, batch)
        assert got == want, (k, cand)
        if k % 4 == 0:  # the naive reference is slow: every 4th request
            ids = tokens.calib if windows is None else fresh_ids(tokens, windows, batch)
            assert got == naive_exact(other, db, problem, fit, cand, ids)
    for cand, _, _ in requests[::7]:
        assert (
            ev.heldout(cand)
            == ev0.heldout(cand)
            == naive_exact(other, db, problem, fit, cand, tokens.heldout)
        )
    # the cache did restart later than the dense inputs allow
    assert ev.stats.blocks_run - before[0] < ev0.stats.blocks_run - before[1]


@pytest.fixture(scope="module")
def spare():
    """A model for tests that build their own evaluators (each one restores it to dense)."""
    adapter = load_model()
    yield adapter
    adapter.restore()


def test_restart_at_the_first_block_that_differs_from_a_cached_trace(setup, spare):
    _, db, problem, tokens, _ = setup
    adapter = spare
    ev = Evaluator(adapter, db, problem, tokens, make_fitness("auto", "encoder"), batch_size=3, stats=EngineStats())
    nb = adapter.num_blocks
    block_input = 4 * 32 * 384 * 4  # windows x seq_len x hidden x float32 bytes
    parent = problem.uniform("rtn-b2-g64")

    def change(cand, block, option="rtn-b4-g128"):
        i = next(i for i, s in enumerate(problem.slots) if s.block == block and not s.is_subblock)
        out = list(cand)
        out[i] = problem.slots[i].options.index(option)
        return problem.canonical(out)

    def blocks(cand, windows=None, batch=0):
        n = ev.stats.blocks_run
        ev.score(cand, windows, batch)
        return ev.stats.blocks_run - n

    assert blocks(parent) == nb  # block 0 compressed: from the dense input of block 0
    assert ev.trace_bytes == (nb - 1) * block_input
    assert blocks(change(parent, nb - 1)) == 1
    assert ev.trace_bytes == (nb - 1) * block_input  # shares every recorded input with the parent
    child = change(parent, 2)
    assert blocks(child) == nb - 2
    assert ev.trace_bytes == (nb - 1 + nb - 3) * block_input
    assert blocks(change(child, 4)) == nb - 4  # from the child's trace
    assert blocks(parent) == 1  # the parent's trace is complete: only the last block runs
    dense = problem.uniform("dense")
    assert blocks(dense) == 1
    # the parent with a sub-block dropped in block 3: from the parent's trace at block 3
    drop = list(parent)
    sb = next(i for i, s in enumerate(problem.slots) if s.is_subblock and s.block == 3)
    drop[sb] = problem.slots[sb].options.index("drop")
    assert blocks(problem.canonical(drop)) == nb - 3
    # another window set has its own traces
    assert blocks(parent, windows=2, batch=5) == nb
    assert blocks(change(parent, nb - 1), windows=2, batch=5) == 1
    assert ev.cached_traces == 7
    ev.clear_caches()
    assert ev.cached_traces == 0 and ev.trace_bytes == 0


def test_trace_cache_is_bounded(setup, spare):
    _, db, problem, tokens, _ = setup
    adapter = spare
    fit = make_fitness("auto", "encoder")
    block_input = 4 * 32 * 384 * 4
    rng = np.random.default_rng(3)
    cands = [problem.uniform(o) for o in ("rtn-b2-g64", "rtn-b4-g128", "magnitude-0.5")]
    ev = Evaluator(adapter, db, problem, tokens, fit, batch_size=3, max_traces=2)
    for c in cands:
        ev.score(c)
    assert ev.cached_traces == 2 and ev.trace_bytes == 2 * 5 * block_input
    # bytes: room for one full trace of the calibration set only
    ev = Evaluator(adapter, db, problem, tokens, fit, batch_size=3, max_trace_bytes=6 * block_input, stats=EngineStats())
    for c in cands:
        ev.score(c)
        assert ev.cached_traces == 1 and ev.trace_bytes == 5 * block_input
    assert ev.stats.trace_bytes_peak == 5 * block_input
    ev = Evaluator(adapter, db, problem, tokens, fit, batch_size=3, max_trace_bytes=0)
    assert ev.score(cands[0]) == ev.score(cands[0]) and ev.cached_traces == 0
    # a fresh window set evicted from its LRU takes its traces with it
    ev = Evaluator(adapter, db, problem, tokens, fit, batch_size=3, max_fresh_sets=1)
    ev.score(cands[0], windows=2, batch=1)
    one = ev.trace_bytes
    assert one == 5 * 2 * 32 * 384 * 4
    ev.score(cands[0], windows=3, batch=2)
    assert ev.cached_traces == 1 and ev.trace_bytes == 5 * 3 * 32 * 384 * 4
    for _ in range(20):  # many traces sharing storage: the count stays exact
        ev.score(mutate(problem, cands[1], rng))
    held = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for tr in ev._traces.values()
        for t in ev._owned(tr)
    }
    assert ev.trace_bytes == sum(held.values()) <= ev.max_trace_bytes
    with pytest.raises(LayerbudgetError, match="max_traces"):
        Evaluator(adapter, db, problem, tokens, fit, max_traces=-1)
    with pytest.raises(LayerbudgetError, match="max_trace_bytes"):
        Evaluator(adapter, db, problem, tokens, fit, max_trace_bytes=-1)


def test_the_trace_cache_meets_the_prefix_bound_while_nothing_is_evicted(setup, spare):
    """With every trace still cached the engine restarts as late as any block-granular scheme can."""
    from layerbudget.evaluators.engine import prefix_bound
    from layerbudget.problem import EvalRequest

    _, db, problem, tokens, _ = setup
    rng = np.random.default_rng(5)
    parent = problem.uniform("rtn-b2-g64")
    requests = []
    for k in range(12):  # offspring of one parent on two window sets, the parent re-scored on each
        child = mutate(problem, parent, rng)
        requests.append(EvalRequest(child) if k % 2 else EvalRequest(child, windows=2, batch=1))
    requests += [EvalRequest(parent), EvalRequest(parent, windows=2, batch=1)]
    fit = make_fitness("auto", "encoder")
    runs = {}
    for name, traces in (("cached", 16), ("dense", 0)):
        ev = Evaluator(spare, db, problem, tokens, fit, batch_size=3, max_traces=traces, stats=EngineStats())
        runs[name] = []
        for r in requests:
            n = ev.stats.blocks_run
            ev.score(r.candidate, r.windows, r.batch)
            runs[name].append(ev.stats.blocks_run - n)
        bound = prefix_bound(ev, requests)
    assert runs["cached"] == bound
    assert all(d >= b for d, b in zip(runs["dense"], bound))
    assert sum(runs["dense"]) > sum(bound)  # the bound counts reuse of earlier candidates, not just dense


def test_evaluators_sharing_a_model_notice_each_others_changes(setup, spare):
    """Two evaluators on one adapter, used in turn, score as each would alone."""
    _, db, problem, tokens, ev = setup
    fit = make_fitness("auto", "encoder")
    rng = np.random.default_rng(11)
    cands = [random_candidate(problem, rng) for _ in range(6)]
    alone = [ev.score(c) for c in cands]
    a = Evaluator(spare, db, problem, tokens, fit, batch_size=3, max_traces=0)
    b = Evaluator(spare, db, problem, tokens, fit, batch_size=3, max_traces=0)
    got = []
    for k, c in enumerate(cands):  # each one's view of the model is stale after the other's turn
        got.append((a if k % 2 == 0 else b).score(c))
    assert got == alone
    assert a.score(cands[1]) == alone[1]
