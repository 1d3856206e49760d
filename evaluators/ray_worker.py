"""One Ray evaluation actor: builds the driver's evaluator from a :class:`ScorerSpec` and scores chunks of requests.

An actor that is given the database through the object store writes it to the spec's database
directory once per node (under a file lock) unless it is already there.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import ray

from layerbudget.evaluators.scorer import ScorerSpec, identity
from layerbudget.problem import EvalRequest
from layerbudget.storage import atomic_dir


def memory() -> dict[str, int]:
    """Resident memory of this process in bytes (``rss`` and, on Linux, its anon/file/shmem parts)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out["rss" if key == "VmRSS" else key.lower().replace("rss", "rss_")] = int(value.split()[0]) * 1024
    if "rss" not in out:
        import resource

        out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, KiB on Linux
    return out


def database_files(root: Path) -> dict[str, np.ndarray]:
    """Every file of a database directory as bytes (relative path -> ``uint8`` array)."""
    return {
        p.relative_to(root).as_posix(): np.frombuffer(p.read_bytes(), dtype=np.uint8)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_database(root: Path, files: Mapping[str, np.ndarray]) -> None:
    """Materialise a shipped database at ``root`` unless it is already there."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # actors of one node write the database once
        except ImportError:  # pragma: no cover - not POSIX
            pass
        if (root / "index.json").exists():
            return
        with atomic_dir(root) as tmp:
            for rel, data in files.items():
                path = tmp / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data.tobytes())


class ScoringWorker:
    """The actor's state: one evaluator; scores requests in order and reports what it holds."""

    def __init__(self, spec: ScorerSpec, threads: int, database: Mapping[str, np.ndarray] | None):
        import torch

        torch.set_num_threads(threads)
        if database is not None:
            write_database(Path(spec.database), database)
        self.evaluator = spec.build()
        self.identity = identity(self.evaluator)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.threads = threads
        self.scored = 0
        self.busy_s = 0.0  # seconds spent scoring (the rest of a task's wall time is Ray's)

    def info(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "node_id": self.node_id,
            "pid": os.getpid(),
            "threads": self.threads,
            "scored": self.scored,
            "traces": self.evaluator.cached_traces,
            "busy_s": self.busy_s,
            "memory": memory(),
        }

    def score_one(self, request: EvalRequest) -> float:
        return float(self.evaluator.score(request.candidate, request.windows, request.batch))

    def score(self, requests: list[EvalRequest]) -> tuple[list[float], str]:
        """Fitness of each request in order, and the node that computed them."""
        start = time.perf_counter()
        out = [self.score_one(r) for r in requests]
        self.scored += len(out)
        self.busy_s += time.perf_counter() - start
        return out, self.node_id

    def clear_caches(self) -> None:
        self.evaluator.clear_caches()
