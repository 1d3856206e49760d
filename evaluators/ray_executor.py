"""Ray executor: scores evaluation requests in parallel on a pool of Ray actors, one model replica each.

Every actor builds its evaluator from the driver's :class:`~layerbudget.evaluators.scorer.ScorerSpec`,
so each request's fitness is the number the inline executor gives for the same request; actors
check at start-up that they see the same calibration tokens, database and model weights (hashes)
as each other and as the driver.

Dispatch: a batch of requests is split into one contiguous range per actor, so consecutive
requests -- usually neighbours in the search space -- land on the same actor and stitching swaps
few units. Each actor takes its range in chunks that shrink as the batch runs out, with up to
``queue_depth`` chunks queued so it never waits for the driver; an actor that runs out of work
steals the back half of the largest range not yet handed out (:class:`WorkPlan`). An actor that
dies mid-chunk (process exit, node loss, ``ray.kill``) is replaced and its chunks are retried, up
to ``max_retries`` times per chunk; errors raised by the evaluator itself are re-raised, never
retried.

Shared data: the spec (a few kB) and, with ``ship_database=True``, the database files are put in the
object store once and passed by reference to every actor (:meth:`RayExecutor.shared_bytes`). Each
actor holds its own model replica, the dense references of its window sets and a decoded-weight
LRU; without shipping, database files are read through ``mmap``, so actors on one node share them
in the page cache. A fractional GPU is requested when the model runs on CUDA; it is only a
scheduling label, every actor still holds a full replica in GPU memory.
"""

from __future__ import annotations

import contextlib
import pickle
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.executor import Executor
from layerbudget.evaluators.ray_connect import connect
from layerbudget.evaluators.ray_worker import ScoringWorker, database_files
from layerbudget.evaluators.scorer import ScorerSpec
from layerbudget.problem import EvalRequest, Evaluation

# an actor process that is gone: crashed, killed, or killed by Ray's memory monitor (host OOM)
_DIED = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError)
OOM_HINT = "lower data.batch_size or --workers, or give each actor more memory"


def _cause(exc: ray.exceptions.RayTaskError) -> BaseException:
    """The evaluator's own exception inside a task error (a LayerbudgetError keeps its one-line message)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, LayerbudgetError):
        return LayerbudgetError(str(cause))
    return cause if isinstance(cause, BaseException) else exc


class WorkPlan:
    """Which requests each actor scores next: own contiguous ranges, cut into shrinking chunks, stealing.

    ``range(n)`` is split into one contiguous range per worker (sizes differing by at most one).
    A worker takes chunks from the front of its own range, so each chunk continues where its
    previous one stopped (neighbouring candidates: stitching swaps few units and block-input traces
    stay useful). A chunk is ``ceil(left / (workers * chunks_per_worker))`` long, ``left`` being the
    requests not yet handed out: long at first, short at the end, so little work is committed to a
    busy actor's queue when the others run dry. A worker whose range is used up steals the back half
    of the largest range not yet handed out, which becomes its own range; so workers finish together
    whatever their speed, and a far jump happens only when one steals. Chunks given back with
    :meth:`retry` (their actor died) come out first, to whichever worker asks next.
    """

    def __init__(self, n: int, workers: int, chunks_per_worker: int):
        workers = max(1, workers)
        size, extra = divmod(n, workers)
        self.ranges: list[list[int]] = []
        start = 0
        for w in range(workers):
            stop = start + size + (1 if w < extra else 0)
            self.ranges.append([start, stop])
            start = stop
        self.parts = workers * max(1, chunks_per_worker)
        self.retries: deque[tuple[int, int]] = deque()

    def next(self, worker: int) -> tuple[int, int] | None:
        if self.retries:
            return self.retries.popleft()
        own = self.ranges[worker]
        if own[0] >= own[1]:
            victim = max(self.ranges, key=lambda r: r[1] - r[0])
            left = victim[1] - victim[0]
            if left <= 0:
                return None
            cut = victim[1] - max(1, left // 2)
            own[0], own[1] = cut, victim[1]
            victim[1] = cut
        left = sum(r[1] - r[0] for r in self.ranges)
        stop = min(own[1], own[0] + -(-left // self.parts))
        chunk = (own[0], stop)
        own[0] = stop
        return chunk

    def retry(self, chunk: tuple[int, int]) -> None:
        self.retries.append(chunk)


# ----- the executor ------------------------------------------------------------------------------
class RayExecutor(Executor):
    """Scores requests on ``num_workers`` Ray actors built from ``spec`` (see the module docstring).

    ``address``: a running cluster (``host:port``, ``ray://host:port`` or ``auto``); ``None`` reuses the
    current Ray session or starts a local one (shut down again by :meth:`close`). ``threads_per_worker``
    is both each actor's CPU request and its ``torch.set_num_threads``; by default the cluster's CPUs
    are split evenly. ``worker_resources`` gives each actor extra custom resources (one mapping per
    worker, e.g. to pin actors to nodes). ``expect``: the driver's evaluator identity
    (:func:`~layerbudget.evaluators.scorer.identity`) every actor must match; without it the actors
    must match each other. ``ship_database`` sends the database through the object store, read here
    from the spec's database directory (or from the directory it names); actors that lack the
    database write it at the spec's path.
    ``chunks_per_worker`` and ``queue_depth`` shape the dispatch: more chunks balance finer but jump
    more often; a deeper queue hides more driver round trips. ``worker_class``: the actor class
    (a :class:`~layerbudget.evaluators.ray_worker.ScoringWorker`).
    """

    def __init__(
        self,
        spec: ScorerSpec,
        *,
        num_workers: int | None = None,
        address: str | None = None,
        threads_per_worker: int | None = None,
        max_retries: int = 3,
        chunks_per_worker: int = 4,
        queue_depth: int = 2,
        worker_resources: Sequence[Mapping[str, float]] | None = None,
        expect: Mapping[str, str] | None = None,
        ship_database: bool | str | Path = False,
        connect_timeout_s: float = 30.0,
        start_timeout_s: float = 600.0,
        worker_class: type[ScoringWorker] = ScoringWorker,
    ):
        for name, value, low in (("num_workers", num_workers, 1), ("threads_per_worker", threads_per_worker, 1),
                                 ("max_retries", max_retries, 0), ("chunks_per_worker", chunks_per_worker, 1),
                                 ("queue_depth", queue_depth, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise LayerbudgetError(f"RayExecutor {name} must be an integer >= {low}, but got {value!r}")
        self.max_retries = max_retries
        self.chunks_per_worker = chunks_per_worker
        self.queue_depth = queue_depth
        self.restarts = 0
        self.last_nodes: list[str] = []
        self._closed = False
        self._actors: list[Any] = []
        self._remote = ray.remote(worker_class)
        self._owns_ray = connect(address, timeout=connect_timeout_s)
        try:
            self._setup(spec, num_workers, threads_per_worker, worker_resources, expect, ship_database, start_timeout_s)
        except BaseException:
            self.close()
            raise

    def _setup(
        self,
        spec: ScorerSpec,
        num_workers: int | None,
        threads: int | None,
        worker_resources: Sequence[Mapping[str, float]] | None,
        expect: Mapping[str, str] | None,
        ship_database: bool | str | Path,
        start_timeout_s: float,
    ) -> None:
        total = ray.cluster_resources()
        cpus = float(total.get("CPU", 0.0))
        if num_workers is None and worker_resources is not None:
            num_workers = len(worker_resources)
        if threads is None:
            threads = max(1, int(cpus // (num_workers or 1))) if num_workers else 1
        if num_workers is None:
            num_workers = max(1, int(cpus // threads))
        if worker_resources is not None and len(worker_resources) != num_workers:
            raise LayerbudgetError(
                f"worker_resources must give one mapping per worker ({num_workers}), but got {len(worker_resources)}"
            )
        if num_workers * threads > cpus:
            raise LayerbudgetError(
                f"{num_workers} workers x {threads} threads need {num_workers * threads} CPUs, but the Ray cluster has "
                f"{cpus:g}; lower num_workers or threads_per_worker"
            )
        gpus = float(total.get("GPU", 0.0))
        device = spec.model.device
        on_gpu = device.startswith("cuda")
        if on_gpu and gpus <= 0:
            raise LayerbudgetError(f"model.device is {device!r}, but the Ray cluster has no GPU; use device = 'cpu'")
        self.num_workers, self.threads_per_worker = num_workers, threads
        self._options = {
            "num_cpus": threads,
            "num_gpus": min(1.0, gpus / num_workers) if on_gpu else 0,
            "max_restarts": 0,  # replaced by hand: the retry count is per chunk, and errors stay clear
        }
        self._resources = [dict(r) for r in worker_resources] if worker_resources is not None else [{}] * num_workers
        self._shared = {"spec": len(pickle.dumps(spec))}
        self._spec_ref = ray.put(spec)
        self._db_ref = None
        if ship_database is not False:
            files = database_files(Path(spec.database if ship_database is True else ship_database))
            self._shared["database"] = sum(a.nbytes for a in files.values())
            self._db_ref = ray.put(files)
        self._actors = [self._spawn(i) for i in range(num_workers)]
        try:
            infos = ray.get([a.info.remote() for a in self._actors], timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise LayerbudgetError(
                f"{num_workers} evaluation actors did not start within {start_timeout_s:g} s; the cluster has "
                f"{ray.available_resources()} free, each actor needs {self._options} {self._resources[0]}"
            ) from None
        except _DIED as exc:
            raise LayerbudgetError(f"an evaluation actor failed to start: {_actor_error(exc)}") from None
        expected = dict(expect) if expect is not None else infos[0]["identity"]
        for info in infos:
            diff = [k for k in expected if info["identity"].get(k) != expected[k]]
            if diff:
                raise LayerbudgetError(
                    f"an evaluation actor on node {info['node_id'][:12]} sees different {', '.join(diff)} than the "
                    "driver; install the same model, data and layerbudget version on every node"
                )

    def _spawn(self, i: int) -> Any:
        opts = dict(self._options)
        if self._resources[i]:
            opts["resources"] = self._resources[i]
        return self._remote.options(**opts).remote(self._spec_ref, self.threads_per_worker, self._db_ref)

    def _replace(self, i: int) -> None:
        with contextlib.suppress(Exception):
            ray.kill(self._actors[i], no_restart=True)
        self._actors[i] = self._spawn(i)
        self.restarts += 1

    # ----- Executor ------------------------------------------------------------------------------
    def evaluate(self, requests: list[EvalRequest]) -> list[Evaluation]:
        if self._closed:
            raise LayerbudgetError("this RayExecutor is closed; create a new one")
        requests = list(requests)
        if not requests:
            return []
        plan = WorkPlan(len(requests), len(self._actors), self.chunks_per_worker)
        attempts: dict[tuple[int, int], int] = {}
        fitness: list[float] = [float("nan")] * len(requests)
        nodes = [""] * len(requests)
        running: dict[Any, tuple[tuple[int, int], int, Any]] = {}  # ref -> (chunk, worker, actor)

        def submit() -> None:
            queued = Counter(w for _, w, _ in running.values())  # chunks each actor has not returned yet
            # breadth first: every actor gets one chunk before any gets a second
            for depth in range(1, self.queue_depth + 1):
                for w, actor in enumerate(self._actors):
                    if queued[w] < depth and (chunk := plan.next(w)) is not None:
                        start, stop = chunk
                        running[actor.score.remote(requests[start:stop])] = (chunk, w, actor)
                        queued[w] += 1

        submit()
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            chunk, w, actor = running.pop(done[0])
            start, stop = chunk
            try:
                values, node = ray.get(done[0])
            except _DIED as exc:
                if self._actors[w] is actor:  # its other queued chunks fail too; replace it once
                    self._replace(w)
                attempts[chunk] = attempts.get(chunk, 0) + 1
                if attempts[chunk] > self.max_retries:
                    oom = _is_oom(exc)
                    raise LayerbudgetError(
                        f"requests {start}..{stop - 1} failed: their evaluation actor "
                        f"{'ran out of memory' if oom else 'died'} {attempts[chunk]} times "
                        f"(max_retries={self.max_retries}); last error: {_actor_error(exc)}"
                        + (f"; {OOM_HINT}" if oom else "")
                    ) from None
                plan.retry(chunk)  # first, on whichever actor has room next
                submit()
                continue
            except ray.exceptions.RayTaskError as exc:
                cause = _cause(exc)
                if _is_oom(cause):  # the scoring itself failed to allocate (host or GPU memory)
                    raise LayerbudgetError(
                        f"an evaluation actor ran out of memory scoring requests {start}..{stop - 1} "
                        f"({_actor_error(cause)}); {OOM_HINT}"
                    ) from None
                raise cause from None
            fitness[start:stop] = values
            nodes[start:stop] = [node] * (stop - start)
            submit()
        self.last_nodes = nodes
        return [Evaluation(r, f) for r, f in zip(requests, fitness)]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self._actors = []
        self._spec_ref = self._db_ref = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def clear_caches(self) -> None:
        if not self._closed:
            ray.get([a.clear_caches.remote() for a in self._actors])

    # ----- inspection ----------------------------------------------------------------------------
    @property
    def actors(self) -> list[Any]:
        """The live actor handles, in worker order (a replaced actor's successor takes its place)."""
        return list(self._actors)

    def worker_info(self) -> list[dict[str, Any]]:
        """Per actor: node id, pid, threads, requests scored, cached traces, seconds spent scoring
        (``busy_s``), memory (bytes: ``rss`` and on Linux ``rss_anon``/``rss_file``/``rss_shmem``) and
        the identity hashes."""
        return ray.get([a.info.remote() for a in self._actors])

    def shared_bytes(self) -> dict[str, int]:
        """Bytes this executor put in the object store, by item (``spec``; ``database`` when shipped)."""
        return dict(self._shared)


def _is_oom(exc: BaseException) -> bool:
    """A memory failure: Ray's memory monitor killed the worker, or an allocation failed inside it."""
    import torch

    if isinstance(exc, (ray.exceptions.OutOfMemoryError, MemoryError, torch.OutOfMemoryError)):
        return True
    return "memory pressure" in str(exc) or "OutOfMemoryError" in str(exc)


def _actor_error(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # the innermost "SomeError: message" line of a traceback, if any
        if "Error:" in ln and not ln.startswith("File "):
            return ln[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]
