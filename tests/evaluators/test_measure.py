"""Per-window measurement of final plans: the engine's numbers, window by window, on any window set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerbudget.data import build_token_sets
from layerbudget.evaluators.engine import EngineStats, Evaluator
from layerbudget.evaluators.fitness import make_fitness
from layerbudget.evaluators.measure import measure_plans, window_partials
from layerbudget.evaluators.uncertainty import paired_difference
from layerbudget.model import load_model
from layerbudget.options import parse_options
from layerbudget.profiles.database import load_or_build_database
from layerbudget.profiles.profile import build_problem

OPTIONS = ["dense", "rtn-b2-g64", "rtn-b4-g128", "drop"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    adapter = load_model()
    tokens = build_token_sets(adapter.tokenizer, seq_len=32, calib_windows=4, heldout_windows=7, seed=0)
    db, _ = load_or_build_database(adapter, parse_options(OPTIONS), tmp_path_factory.mktemp("c"), progress=False)
    problem = build_problem(adapter, db, OPTIONS)
    ev = Evaluator(adapter, db, problem, tokens, make_fitness("auto", "encoder"), batch_size=3,
                   stats=EngineStats())
    yield problem, tokens, ev
    adapter.restore()


def plans(problem):
    rng = np.random.default_rng(0)
    out = [problem.uniform("rtn-b4-g128"), problem.uniform("rtn-b2-g64")]
    out += [problem.canonical([int(rng.integers(len(s.options))) for s in problem.slots]) for _ in range(2)]
    return out


def test_per_window_scores_add_up_to_the_engines(setup):
    problem, tokens, ev = setup
    cands = plans(problem)
    held = measure_plans(ev, cands, tokens.heldout)
    calib = measure_plans(ev, cands, tokens.calib, batch_size=2)  # any batching gives the same windows
    for cand, h, c in zip(cands, held, calib):
        assert h.windows == 7 and c.windows == 4
        assert h.value == pytest.approx(ev.heldout(cand), rel=1e-5)
        assert c.value == pytest.approx(ev.score(cand), rel=1e-5)
        assert h.se > 0
    # the model is left dense, and the evaluator still scores from there
    assert ev.score(problem.uniform("dense")) == 0.0
    assert ev.score(cands[0]) == pytest.approx(calib[0].value, rel=1e-5)


def test_one_window_alone_scores_what_its_partials_say(setup):
    problem, tokens, ev = setup
    cand = plans(problem)[1]
    scores = measure_plans(ev, [cand], tokens.heldout)[0]
    for w in (0, 4):
        alone = measure_plans(ev, [cand], tokens.heldout[w : w + 1])[0]
        assert alone.num[0] == pytest.approx(scores.num[w], rel=1e-5)
        assert alone.den[0] == pytest.approx(scores.den[w], rel=1e-5)


def test_repeated_plans_are_scored_once_and_compare_to_zero(setup):
    problem, tokens, ev = setup
    cand = plans(problem)[0]
    before = ev.stats.scored
    a, b = measure_plans(ev, [cand, cand], tokens.heldout)
    assert ev.stats.scored == before and a is b
    d = paired_difference(a, b)
    assert d.value == 0 and d.se == 0


def test_window_partials_sum_to_the_batch_partial():
    fit = make_fitness("kl", "causal")
    torch.manual_seed(0)
    ref = fit.reference(torch.randn(3, 5, 11))
    out = torch.randn(3, 5, 11)
    num, den = window_partials(fit, out, ref)
    n, d = fit.partial(out, ref)
    assert num.shape == (3,) and float(num.sum()) == pytest.approx(n, rel=1e-5) and float(den.sum()) == d
