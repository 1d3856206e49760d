"""The Ray executor: same numbers as inline, request order, every node used, actor deaths survived.

All tests share the session's two-node cluster (``ray_cluster`` in ``conftest.py``) and one executor
with one actor pinned to each node, so the suite pays for Ray and the actors' model loading once.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from layerbudget.errors import LayerbudgetError  # noqa: E402
from layerbudget.evaluators.executor import InlineExecutor  # noqa: E402
from layerbudget.evaluators.loop import run_search  # noqa: E402
from layerbudget.evaluators.ray_executor import RayExecutor, WorkPlan  # noqa: E402
from layerbudget.evaluators.ray_worker import ScoringWorker  # noqa: E402
from layerbudget.evaluators.scorer import identity  # noqa: E402
from layerbudget.experiments.config import config_from_dict  # noqa: E402
from layerbudget.experiments.prepare import prepare  # noqa: E402
from layerbudget.problem import EvalRequest  # noqa: E402
from layerbudget.search.registry import make_searcher  # noqa: E402

SMALL_EVOLUTION = {"generations": 3, "offspring": 4, "stages": [(2, 1), (1, 2)]}


def small_config(cache_dir) -> object:
    return config_from_dict(
        {
            "name": "ray-test",
            "data": {"seq_len": 32, "calib_windows": 4, "heldout_windows": 2, "batch_size": 4},
            "options": {"names": ["rtn-b2-g64", "rtn-b4-g128", "drop"]},
            "budget": {"avg_bits": 3.5},
            "search": {"searchers": ["evolution"]},
            "output": {"cache_dir": str(cache_dir)},
        }
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    prep = prepare(small_config(tmp_path_factory.mktemp("ray-cache")), progress=False)
    yield prep
    prep.adapter.restore()


@pytest.fixture(scope="module")
def inline(prepared):
    return InlineExecutor(prepared.evaluator())


@pytest.fixture(scope="module")
def shipped_cache(tmp_path_factory):
    """An empty cache dir for the actors: they get the database through the object store."""
    return tmp_path_factory.mktemp("actor-cache")


def faulty_worker() -> type[ScoringWorker]:
    """An actor class that can be told to fail: defined in a function, so Ray ships it by value."""

    class FaultyWorker(ScoringWorker):
        exit_in: int | None = None
        oom_in: int | None = None

        def exit_after(self, n: int) -> None:
            """Exit the process when about to score the request after the next ``n``."""
            self.exit_in = n

        def oom_after(self, n: int) -> None:
            """Raise ``MemoryError`` (once) when about to score the request after the next ``n``."""
            self.oom_in = n

        def score_one(self, request):
            if self.exit_in is not None:
                self.exit_in -= 1
                if self.exit_in < 0:
                    os._exit(1)  # die like a crashed or OOM-killed worker
            if self.oom_in is not None:
                self.oom_in -= 1
                if self.oom_in < 0:
                    self.oom_in = None
                    raise MemoryError("fault injection: allocation failed")
            return super().score_one(request)

    return FaultyWorker


@pytest.fixture(scope="module")
def spec(prepared, shipped_cache):
    """The driver's scorer spec, its database moved to a cache dir the actors find empty."""
    return dataclasses.replace(prepared.scorer_spec(), database=str(shipped_cache / "db" / prepared.database.root.name))


@pytest.fixture(scope="module")
def executor(ray_cluster, prepared, spec):
    """Two actors, one pinned to each node, given the database through the object store."""
    ex = RayExecutor(
        spec,
        address=ray_cluster.address,
        num_workers=2,
        threads_per_worker=1,
        worker_resources=[{r: 1} for r in ray_cluster.node_resources],
        expect=identity(prepared.evaluator()),
        ship_database=prepared.database.root,
        worker_class=faulty_worker(),
    )
    yield ex
    ex.close()


def requests(problem, n: int, seed: int) -> list[EvalRequest]:
    """Random candidates on the calibration set and on two fresh batches, interleaved."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cand = problem.canonical([int(rng.integers(len(s.options))) for s in problem.slots])
        out.append(EvalRequest(cand) if i % 3 == 0 else EvalRequest(cand, windows=2, batch=i % 2))
    return out


def fitness(evaluations) -> list[float]:
    return [e.fitness for e in evaluations]


def drain(plan: WorkPlan, order: list[int]) -> dict[int, list[tuple[int, int]]]:
    """Chunks handed to each worker when they ask in the cyclic ``order`` until none is left."""
    got: dict[int, list[tuple[int, int]]] = {w: [] for w in set(order)}
    while True:
        progressed = False
        for w in order:
            chunk = plan.next(w)
            if chunk is not None:
                got[w].append(chunk)
                progressed = True
        if not progressed:
            return got


def test_work_plan_covers_every_request_once_in_shrinking_contiguous_chunks():
    got = drain(WorkPlan(10, 2, 2), [0, 1])  # chunks of ceil(left / 4)
    assert got == {0: [(0, 3), (3, 5), (9, 10)], 1: [(5, 7), (7, 8), (8, 9)]}  # 0 stole [9, 10)
    assert drain(WorkPlan(2, 4, 1), [0, 1, 2, 3]) == {0: [(0, 1)], 1: [(1, 2)], 2: [], 3: []}
    assert drain(WorkPlan(0, 2, 4), [0, 1]) == {0: [], 1: []}


def test_work_plan_lets_a_fast_worker_steal_the_back_half_of_the_largest_range():
    plan = WorkPlan(40, 2, 1)
    got = drain(plan, [0, 0, 0, 1])  # worker 0 asks three times as often as worker 1
    chunks = sorted(c for cs in got.values() for c in cs)
    assert [i for a, b in chunks for i in range(a, b)] == list(range(40))  # each request exactly once
    # worker 0: its own range, then the back half of worker 1's range left, three times over
    assert got == {0: [(0, 20), (30, 40), (25, 30), (24, 25), (23, 24)], 1: [(20, 23)]}


def test_work_plan_hands_out_retried_chunks_first():
    plan = WorkPlan(8, 2, 1)
    assert plan.next(0) == (0, 4)
    plan.retry((0, 4))
    assert plan.next(1) == (0, 4)
    assert plan.next(1) == (4, 6)


def test_matches_inline_in_request_order_on_every_node(executor, inline, prepared, shipped_cache):
    reqs = requests(prepared.problem, 12, seed=0)
    got = executor.evaluate(reqs)
    assert [e.request for e in got] == reqs
    assert fitness(got) == fitness(inline.evaluate(reqs))  # bit-identical, not approximately equal
    infos = executor.worker_info()
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert {i["node_id"] for i in infos} == nodes == set(executor.last_nodes)
    # contiguous chunks: the scoring node changes only at chunk boundaries (2 per actor)
    switches = sum(a != b for a, b in zip(executor.last_nodes, executor.last_nodes[1:]))
    assert switches <= 2 * executor.num_workers - 1
    assert all(i["threads"] == 1 and i["memory"]["rss"] > 0 for i in infos)
    assert len({i["pid"] for i in infos}) == 2
    # the actors found no database in their cache dir and wrote the shipped one
    assert (shipped_cache / "db" / prepared.database.root.name / "index.json").is_file()
    assert executor.shared_bytes()["database"] >= prepared.database.size_bytes() > 0
    assert executor.evaluate([]) == []


def test_search_survives_dead_actors(executor, inline, prepared):
    """One actor exits mid-chunk, another was killed while idle: both replaced, same search result."""
    budget = prepared.cfg.budget[0]

    def search(ex):
        searcher = make_searcher("evolution", prepared.problem, budget, seed=3, **SMALL_EVOLUTION)
        return run_search(searcher, ex)

    expected = search(inline)
    before = executor.restarts
    ray.get(executor.actors[0].exit_after.remote(2))
    ray.kill(executor.actors[1], no_restart=True)
    got = search(executor)
    assert executor.restarts - before == 2
    assert got.result == expected.result
    assert fitness(got.evaluations) == fitness(expected.evaluations)
    assert [e.request for e in got.evaluations] == [e.request for e in expected.evaluations]


def test_clear_caches_empties_every_actors_trace_cache(executor, inline, prepared):
    reqs = requests(prepared.problem, 6, seed=5)
    want = fitness(executor.evaluate(reqs))
    assert sum(i["traces"] for i in executor.worker_info()) > 0
    executor.clear_caches()
    assert [i["traces"] for i in executor.worker_info()] == [0, 0]
    assert fitness(executor.evaluate(reqs)) == want
    inline.clear_caches()
    assert inline.scorer.cached_traces == 0


def test_an_actor_dying_with_queued_chunks_is_replaced_once(executor, inline, prepared):
    reqs = requests(prepared.problem, 12, seed=4)
    before, cpw = executor.restarts, executor.chunks_per_worker
    executor.chunks_per_worker = 6  # chunks of one request, two queued per actor
    try:
        ray.get(executor.actors[0].exit_after.remote(0))
        got = executor.evaluate(reqs)
    finally:
        executor.chunks_per_worker = cpw
    assert executor.restarts - before == 1  # both queued chunks failed, the actor was replaced once
    assert fitness(got) == fitness(inline.evaluate(reqs))


def test_gives_up_after_max_retries_with_a_clear_error(executor, inline, prepared):
    reqs = requests(prepared.problem, 4, seed=1)
    executor.max_retries = 0
    try:
        ray.get(executor.actors[1].exit_after.remote(0))
        with pytest.raises(LayerbudgetError, match=r"died 1 times \(max_retries=0\)"):
            executor.evaluate(reqs)
    finally:
        executor.max_retries = 3
    assert fitness(executor.evaluate(reqs)) == fitness(inline.evaluate(reqs))  # replaced, usable again


def test_out_of_memory_in_an_actor_is_reported_clearly(executor, inline, prepared):
    reqs = requests(prepared.problem, 4, seed=2)
    before = executor.restarts
    ray.get(executor.actors[0].oom_after.remote(0))
    with pytest.raises(LayerbudgetError, match=r"ran out of memory scoring requests .*lower data.batch_size or --workers"):
        executor.evaluate(reqs)
    assert executor.restarts == before  # not a crash: nothing to replace, and the executor stays usable
    assert fitness(executor.evaluate(reqs)) == fitness(inline.evaluate(reqs))


def test_evaluator_errors_are_reraised_not_retried(executor, prepared):
    cand = prepared.problem.uniform("rtn-b4-g128")
    before = executor.restarts
    with pytest.raises(LayerbudgetError, match="calibration windows"):
        executor.evaluate([EvalRequest(cand, windows=10**6, batch=0)])
    assert executor.restarts == before


def test_unreachable_address_fails_fast(prepared):
    with socket.socket() as s:  # a local port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.perf_counter()
    with pytest.raises(LayerbudgetError, match=f"cannot reach a Ray cluster at '127.0.0.1:{port}'"):
        RayExecutor(prepared.scorer_spec(), address=f"127.0.0.1:{port}")
    assert time.perf_counter() - t < 30


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_workers": 3, "threads_per_worker": 1}, "need 3 CPUs, but the Ray cluster has 2"),
        ({"num_workers": 0}, "num_workers must be an integer >= 1"),
        ({"max_retries": -1}, "max_retries must be an integer >= 0"),
        ({"queue_depth": 0}, "queue_depth must be an integer >= 1"),
        ({"num_workers": 2, "worker_resources": [{}]}, "one mapping per worker"),
        ({"address": "nonsense"}, "host:port"),
    ],
    ids=["too-many-cpus", "zero-workers", "negative-retries", "zero-queue-depth", "resources-length", "address"],
)
def test_bad_arguments_are_refused(ray_cluster, prepared, kwargs, match):
    with pytest.raises(LayerbudgetError, match=match):
        RayExecutor(prepared.scorer_spec(), **kwargs)
