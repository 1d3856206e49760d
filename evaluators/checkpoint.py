"""Checkpoint a searcher between ask/tell rounds, and restore it where it stopped.

File format (version 3), always replaced atomically and durably::

    LAYERBUDGET-CHECKPOINT 3 <sha256 of body> <bytes in body>\\n
    body = <header: one JSON line>\\n<payload: pickle>

The header names the searcher (registry name and class), the seed, the budget, a fingerprint of
what else decides the search's results (given by the caller, e.g. the experiment config), a hash of
the problem, the ``numpy`` bit-generator state of ``searcher.rng`` and counts. The payload holds
the searcher's attributes and every evaluation so far, round by round. The problem, budget and
generator are stored *by reference*: on restore they are the live objects of the freshly built
searcher, so a checkpoint stays small and cannot smuggle in another problem.

A file whose length or sha256 does not match, whose header is unreadable, of another version, or
that belongs to another fingerprint, problem, budget, seed or searcher is refused with a one-line
:class:`LayerbudgetError`; nothing of the searcher changes unless the whole file verified. The hash
guards against corruption and truncation, not against tampering: only restore checkpoints this
program wrote (unpickling runs code).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerbudget.errors import LayerbudgetError
from layerbudget.problem import AskTell, EvalRequest, Evaluation, Problem
from layerbudget.storage import atomic_write_bytes, content_hash

MAGIC = b"LAYERBUDGET-CHECKPOINT"
VERSION = 3  # 2: typed parameters records, search.feasible; 3: exchange switches and chained mutations (new state)

Rounds = list[list[Evaluation]]


def problem_fingerprint(problem: Problem) -> str:
    """sha256 of the slots, options, costs and proxy scores of a problem."""
    return content_hash(
        {
            "slots": [[s.name, s.options, s.units, s.block, s.subblock, s.is_subblock] for s in problem.slots],
            "other_numel": problem.other_numel,
            "coef": {m: [c.tolist() for c in cs] for m, cs in sorted(problem.coef.items())},
            "proxy": [[float(x).hex() for x in p] for p in problem.proxy],
        }
    )


@dataclass(frozen=True)
class _Live:
    """The live objects a searcher's state refers to by reference."""

    problem: Problem
    budget: object
    rng: object

    def ids(self) -> dict[int, str]:
        return {id(self.problem): "problem", id(self.budget): "budget", id(self.rng): "rng"}


class _Pickler(pickle.Pickler):
    def __init__(self, file: Any, live: _Live):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._ids = live.ids()

    def persistent_id(self, obj: Any) -> str | None:
        return self._ids.get(id(obj))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, live: _Live):
        super().__init__(file)
        self._live = live

    def persistent_load(self, pid: Any) -> Any:
        if pid not in ("problem", "budget", "rng"):
            raise pickle.UnpicklingError(f"unknown reference {pid!r}")
        return getattr(self._live, pid)


def _live(searcher: AskTell) -> _Live:
    return _Live(searcher.problem, searcher.budget, searcher.rng)


def _header(searcher: AskTell, fingerprint: str | None, rounds: Rounds) -> dict[str, Any]:
    cls = type(searcher)
    return {
        "version": VERSION,
        "searcher": searcher.name,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "seed": searcher.seed,
        "budget": searcher.budget.to_dict(),
        "config_sha256": fingerprint,
        "problem_sha256": problem_fingerprint(searcher.problem),
        "rng_state": searcher.rng.bit_generator.state,
        "rounds": len(rounds),
        "evaluations": sum(len(r) for r in rounds),
    }


def save_checkpoint(searcher: AskTell, path: str | Path, rounds: Rounds, *, fingerprint: str | None = None) -> None:
    """Write the searcher's state and the evaluations so far to ``path`` (atomically)."""
    path = Path(path)
    plain = [[(e.request.candidate, e.request.windows, e.request.batch, e.fitness) for e in r] for r in rounds]
    buf = io.BytesIO()
    try:
        _Pickler(buf, _live(searcher)).dump({"state": searcher.__dict__, "rounds": plain})
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise LayerbudgetError(f"searcher {searcher.name!r} cannot be checkpointed: its state does not pickle ({exc})") from None
    body = json.dumps(_header(searcher, fingerprint, rounds), sort_keys=True).encode("utf-8") + b"\n" + buf.getvalue()
    first = MAGIC + f" {VERSION} {hashlib.sha256(body).hexdigest()} {len(body)}\n".encode("ascii")
    atomic_write_bytes(path, first + body, durable=True)


def _read(path: Path) -> tuple[dict[str, Any], bytes]:
    """(header, payload) of a verified checkpoint file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LayerbudgetError(f"cannot read checkpoint {str(path)!r}: {exc.strerror or exc}") from None
    first, nl, body = data.partition(b"\n")
    parts = first.split(b" ")
    if not nl or len(parts) != 4 or parts[0] != MAGIC:
        raise LayerbudgetError(f"{str(path)!r} is not a layerbudget checkpoint (bad first line); delete it or pass another path")
    if parts[1] != str(VERSION).encode():
        raise LayerbudgetError(f"checkpoint {str(path)!r} has format version {parts[1].decode(errors='replace')}, this layerbudget reads {VERSION}")
    if not parts[3].isdigit() or len(body) != int(parts[3]):
        raise LayerbudgetError(
            f"checkpoint {str(path)!r} is truncated or padded: {len(body)} bytes after the first line, "
            f"{parts[3].decode(errors='replace')} recorded; delete it to start over"
        )
    if hashlib.sha256(body).hexdigest().encode() != parts[2]:
        raise LayerbudgetError(f"checkpoint {str(path)!r} is corrupted (sha256 mismatch); delete it to start over")
    head, _, payload = body.partition(b"\n")
    try:
        header = json.loads(head)
    except ValueError:  # pragma: no cover - the hash matched, so only a writer bug gets here
        raise LayerbudgetError(f"checkpoint {str(path)!r} has an unreadable header") from None
    return header, payload


def load_checkpoint(searcher: AskTell, path: str | Path, *, fingerprint: str | None = None) -> Rounds:
    """Restore ``searcher`` (freshly built with the same problem, budget and seed) from ``path``.

    Returns the evaluations so far, round by round. Raises :class:`LayerbudgetError` and leaves the
    searcher untouched when the file is damaged or was written for another search.
    """
    path = Path(path)
    header, payload = _read(path)
    identity = ("searcher", "class", "seed", "budget", "config_sha256", "problem_sha256")
    current = _header(searcher, fingerprint, [])
    expected = {key: current[key] for key in identity}
    for key, want in expected.items():
        if header.get(key) != json.loads(json.dumps(want)):
            raise LayerbudgetError(
                f"checkpoint {str(path)!r} was written with a different {key.replace('_sha256', '')} "
                f"({_short(header.get(key))}, this run has {_short(want)}); resume with the original settings "
                "or delete the checkpoint"
            )
    rng_state = header.get("rng_state")
    if not isinstance(rng_state, Mapping) or rng_state.get("bit_generator") != type(searcher.rng.bit_generator).__name__:
        raise LayerbudgetError(f"checkpoint {str(path)!r} holds no {type(searcher.rng.bit_generator).__name__} state")

    try:
        data = _Unpickler(io.BytesIO(payload), _live(searcher)).load()
        state, plain = data["state"], data["rounds"]
        rounds = [
            [Evaluation(EvalRequest(tuple(c), w, b), float(f)) for c, w, b, f in r] for r in plain
        ]
    except Exception as exc:  # the hash matched: a class changed between versions of the code
        raise LayerbudgetError(f"checkpoint {str(path)!r} does not load with this code ({type(exc).__name__}: {exc})") from None
    if len(rounds) != header.get("rounds"):  # pragma: no cover - guarded by the hash
        raise LayerbudgetError(f"checkpoint {str(path)!r} is inconsistent: round counts differ")
    searcher.rng.bit_generator.state = dict(rng_state)  # verified everything: now change the searcher
    searcher.__dict__.clear()
    searcher.__dict__.update(state)
    return rounds


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 20 else text[:12] + "..."
