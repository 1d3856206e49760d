"""The evaluation engine: stitching, block-restart equals a naive full evaluation, fresh batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerbudget.data import build_token_sets
from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.engine import Evaluator
from layerbudget.evaluators.fitness import make_fitness
from layerbudget.model import load_model
from layerbudget.profiles.database import load_or_build_database
from layerbudget.profiles.options import parse_options
from layerbudget.profiles.profile import build_problem

OPTIONS = ["dense", "rtn-b2-g64", "rtn-b4-g128", "magnitude-0.5", "drop"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    adapter = load_model()
    tokens = build_token_sets(adapter.tokenizer, seq_len=32, calib_windows=4, heldout_windows=3, seed=0)
    db, _ = load_or_build_database(adapter, parse_options(OPTIONS), tmp_path_factory.mktemp("c"), progress=False)
    problem = build_problem(adapter, db, OPTIONS)
    ev = Evaluator(adapter, db, problem, tokens, make_fitness("auto", "encoder"), batch_size=3)
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
