"""Searcher checkpoints: resuming gives the uninterrupted result; damaged or foreign files are refused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.checkpoint import load_checkpoint, save_checkpoint
from layerbudget.evaluators.executor import InlineExecutor
from layerbudget.evaluators.loop import run_search
from layerbudget.experiments.config import config_from_dict
from layerbudget.problem import Budget, Candidate, EvalRequest, Evaluation, Problem, Slot
from layerbudget.search.base import Searcher
from layerbudget.search.registry import make_searcher

OPTIONS = ("dense", "rtn-b2-g64", "rtn-b3-g64", "rtn-b4-g128")
BUDGET = Budget.from_dict({"avg_bits": 4.0})
CONFIG = {"name": "ckpt", "seed": 0, "search": {"searchers": ["evolution"]}, "output": {"dir": "a"}}
FINGERPRINT = config_from_dict(CONFIG).fingerprint()
SMALL = {
    "evolution": {"generations": 4, "offspring": 5, "stages": [(2, 1), (1, 2)]},
    "random": {"n": 5},
}


def small_problem(scale: float = 1.0) -> Problem:
    slots, proxy = [], {}
    for b in range(3):
        for name, shape in (("qkv", (64, 128)), ("o", (32, 256)), ("mlp", (64, 128))):
            slot = f"b{b}.{name}"
            slots.append(Slot(slot, OPTIONS, ((slot, shape),), b))
            for o, base in zip(OPTIONS[1:], (1.0, 0.4, 0.15)):
                proxy[(slot, o)] = scale * base * (1 + 0.1 * b)
    return Problem(slots, other_numel=100, proxy=proxy)


class Scorer:
    """Deterministic, non-additive fitness with batch-seeded noise; NaN for one candidate in 7."""

    def __init__(self, problem: Problem):
        self.problem = problem

    def score(self, candidate: Candidate, windows: int | None = None, batch: int = 0) -> float:
        if sum(candidate) % 7 == 3:
            return math.nan
        rng = np.random.default_rng([batch, windows or 0, *candidate])
        return self.problem.proxy_score(candidate) + 0.05 * float(rng.normal())


class WalkSearcher(Searcher):
    """A test searcher with several rounds of state: random walks from the best candidate so far."""

    name = "walk"

    def __init__(self, problem, budget, *, seed: int = 0, rounds: int = 5, width: int = 3):
        super().__init__(problem, budget, seed=seed)
        self.rounds, self.width = rounds, width
        self.best: tuple[float, Candidate] = (math.inf, problem.uniform("rtn-b3-g64"))
        self.seen: set[Candidate] = set()
        self.history = np.zeros(0)
        self._asked: list[EvalRequest] = []

    def ask(self) -> list[EvalRequest]:
        if self.rounds == 0:
            return []
        out = []
        for _ in range(self.width):
            cand = list(self.best[1])
            cand[int(self.rng.integers(len(cand)))] = int(self.rng.integers(len(OPTIONS)))
            cand = self.problem.canonical(cand)
            if self.problem.satisfies(cand, self.budget):
                out.append(EvalRequest(cand, windows=1, batch=int(self.rng.integers(1000))))
        self._asked = out or [EvalRequest(self.best[1])]
        return self._asked

    def tell(self, evaluations: list[Evaluation]) -> None:
        self.rounds -= 1
        for e in evaluations:
            self.seen.add(e.candidate)
            self.history = np.append(self.history, e.fitness)
            if e.fitness < self.best[0]:
                self.best = (e.fitness, e.candidate)

    def result(self) -> Candidate:
        return self.best[1]


class Interrupted(Exception):
    pass


class CrashingExecutor(InlineExecutor):
    """Inline scoring that dies (like a killed process) when asked for round ``crash_at``."""

    def __init__(self, scorer, crash_at: int):
        super().__init__(scorer)
        self.crash_at, self.calls = crash_at, 0

    def evaluate(self, requests):
        if self.calls == self.crash_at:
            raise Interrupted
        self.calls += 1
        return super().evaluate(requests)


def make(name: str, problem: Problem, seed: int = 0) -> Searcher:
    if name == "walk":
        return WalkSearcher(problem, BUDGET, seed=seed)
    return make_searcher(name, problem, BUDGET, seed=seed, **SMALL.get(name, {}))


def key(outcome) -> tuple:
    """Result and every (request, fitness) of an outcome; NaN compared as a string."""
    return outcome.result, [(e.request, repr(e.fitness)) for e in outcome.evaluations]


@pytest.fixture
def problem() -> Problem:
    return small_problem()


@pytest.mark.parametrize("name", ["walk", "evolution", "random"])
def test_resume_after_any_round_equals_uninterrupted(problem, tmp_path, name):
    scorer = Scorer(problem)
    counting = CrashingExecutor(scorer, crash_at=-1)
    expected = run_search(make(name, problem), counting)
    assert counting.calls >= (1 if name == "random" else 3)
    for crash_at in range(counting.calls + 1):  # also "after the last round" (ask() returns nothing)
        path = tmp_path / f"{name}-{crash_at}.ckpt"
        if crash_at < counting.calls:
            with pytest.raises(Interrupted):
                run_search(make(name, problem), CrashingExecutor(scorer, crash_at), checkpoint=path, fingerprint=FINGERPRINT)
        else:
            run_search(make(name, problem), InlineExecutor(scorer), checkpoint=path, fingerprint=FINGERPRINT)
        assert path.exists() == (crash_at > 0)
        log: list[list[Evaluation]] = []
        got = run_search(make(name, problem), InlineExecutor(scorer), checkpoint=path, fingerprint=FINGERPRINT,
                         on_evaluations=log.append)
        assert key(got) == key(expected)
        assert [e for r in log for e in r] == got.evaluations  # restored rounds were replayed in order


def test_completed_checkpoint_resumes_to_the_same_outcome(problem, tmp_path):
    path = tmp_path / "done.ckpt"
    first = run_search(make("evolution", problem), InlineExecutor(Scorer(problem)), checkpoint=path)
    again = run_search(make("evolution", problem), CrashingExecutor(Scorer(problem), 0), checkpoint=path)
    assert key(again) == key(first)


def test_rng_state_and_evaluations_are_restored(problem, tmp_path):
    searcher = make("walk", problem, seed=5)
    ex = InlineExecutor(Scorer(problem))
    rounds = []
    for _ in range(2):
        res = ex.evaluate(searcher.ask())
        searcher.tell(res)
        rounds.append(res)
    save_checkpoint(searcher, tmp_path / "c", rounds)
    fresh = make("walk", problem, seed=5)
    assert fresh.rng.bit_generator.state != searcher.rng.bit_generator.state
    got = load_checkpoint(fresh, tmp_path / "c")
    assert fresh.rng.bit_generator.state == searcher.rng.bit_generator.state
    assert got == rounds
    assert fresh.problem is problem and fresh.budget is searcher.budget  # by reference, not copies
    assert fresh.seen == searcher.seen and np.array_equal(fresh.history, searcher.history, equal_nan=True)
    assert fresh.ask() == searcher.ask()


@pytest.fixture
def saved(problem, tmp_path) -> Path:
    path = tmp_path / "run.ckpt"
    searcher = make("walk", problem)
    res = InlineExecutor(Scorer(problem)).evaluate(searcher.ask())
    searcher.tell(res)
    save_checkpoint(searcher, path, [res], fingerprint=FINGERPRINT)
    return path


def _untouched(searcher: Searcher) -> tuple:
    return searcher.rng.bit_generator.state, searcher.rounds, frozenset(searcher.seen)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda b: b[:-7], "truncated"),
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 0x01]), r"corrupted \(sha256 mismatch\)"),
        (lambda b: b.replace(b'"seed": 0', b'"seed": 1'), r"corrupted \(sha256 mismatch\)"),
        (lambda b: b"garbage\n" + b, "not a layerbudget checkpoint"),
        (lambda b: b"", "not a layerbudget checkpoint"),
        (lambda b: b.replace(b"CHECKPOINT 3 ", b"CHECKPOINT 9 ", 1), "format version 9"),
        (lambda b: b.replace(b"CHECKPOINT 3 ", b"CHECKPOINT 2 ", 1), "format version 2, this layerbudget reads 3"),
    ],
    ids=["truncated-tail", "truncated-half", "bit-flip", "edited-header", "garbage", "empty", "future-version",
         "old-version"],
)
def test_damaged_checkpoint_is_refused_and_changes_nothing(problem, saved, damage, match):
    saved.write_bytes(damage(saved.read_bytes()))
    fresh = make("walk", problem)
    before = _untouched(fresh)
    with pytest.raises(LayerbudgetError, match=match):
        run_search(fresh, InlineExecutor(Scorer(problem)), checkpoint=saved, fingerprint=FINGERPRINT)
    assert _untouched(fresh) == before


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"fingerprint": config_from_dict({**CONFIG, "seed": 1}).fingerprint()}, "different config"),
        ({"fingerprint": None}, "different config"),
        ({"seed": 2}, "different seed"),
        ({"problem": small_problem(scale=2.0)}, "different problem"),
        ({"budget": Budget.from_dict({"avg_bits": 3.9})}, "different budget"),
        ({"searcher": "random"}, "different searcher"),
    ],
    ids=["config", "no-config", "seed", "problem", "budget", "searcher"],
)
def test_foreign_checkpoint_is_refused(problem, saved, change, match):
    prob = change.get("problem", problem)
    budget = change.get("budget", BUDGET)
    if change.get("searcher"):
        fresh = make_searcher(change["searcher"], prob, budget, seed=0, n=3)
    else:
        fresh = WalkSearcher(prob, budget, seed=change.get("seed", 0))
    with pytest.raises(LayerbudgetError, match=match):
        load_checkpoint(fresh, saved, fingerprint=change.get("fingerprint", FINGERPRINT))


def test_output_and_executor_sections_do_not_block_resume(problem, saved):
    moved = {**CONFIG, "output": {"dir": "elsewhere", "cache_dir": "/tmp/x"}, "executor": {"workers": 7}}
    fingerprint = config_from_dict(moved).fingerprint()
    assert len(load_checkpoint(make("walk", problem), saved, fingerprint=fingerprint)) == 1


def test_writes_are_atomic_and_unpicklable_state_is_a_clear_error(problem, saved):
    before = saved.read_bytes()
    searcher = make("walk", problem)
    searcher.hook = lambda: None  # lambdas do not pickle
    with pytest.raises(LayerbudgetError, match="cannot be checkpointed"):
        save_checkpoint(searcher, saved, [], fingerprint=FINGERPRINT)
    assert saved.read_bytes() == before  # the old checkpoint survives a failed write
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no temporary files left behind
