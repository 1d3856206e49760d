"""The profile: cost and sensitivity of every (slot, option), cached as ``profile.parquet``.

Also builds the search :class:`~layerbudget.problem.Problem` from a model and its database:
one slot per tie group (options = ``dense`` plus every stored option that applies to all its
units) and, when ``drop`` is among the options, one keep/drop slot per attention/MLP sub-block.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from layerbudget.errors import LayerbudgetError
from layerbudget.model import ModelAdapter
from layerbudget.notices import notice
from layerbudget.options import DENSE, DROP
from layerbudget.problem import KEEP, Candidate, Problem, Slot
from layerbudget.profiles.database import CorruptCache, Database
from layerbudget.profiles.sensitivity import one_at_a_time, weight_error
from layerbudget.storage import atomic_path, content_hash, hash_matches, profile_file, write_with_hash

PROFILE_VERSION = 2
COLUMNS = [
    "slot", "option", "kind", "block", "numel", "bits", "bytes", "zeros", "avg_bits",
    "fitness", "output_error", "weight_error", "block_influence", "outlier_ratio",
]
FEATURES = ("block_influence", "outlier_ratio")  # per-slot measures (the same on every row of a slot)


def build_problem(adapter: ModelAdapter, database: Database, options: Sequence[str]) -> Problem:
    """Slots for every tie group (and sub-block, when ``drop`` is an option) with their options."""
    drop = DROP in options
    if drop and not adapter.subblocks:
        raise LayerbudgetError(f"option 'drop' needs droppable sub-blocks, but model {adapter.model_id!r} has none")
    stored = [o for o in options if o not in (DENSE, DROP)]
    slots: list[Slot] = []
    for sb_kind_block in _ordered_subblocks(adapter):
        sb, groups = sb_kind_block
        if drop and sb is not None:
            units = tuple((u, adapter.unit(u).shape) for u in sb.units)
            slots.append(Slot(sb.name, (KEEP, DROP), units, sb.block, is_subblock=True))
        for g in groups:
            have = [o for o in stored if all(o in database.unit_options(u.name) for u in g.units)]
            units = tuple((u.name, u.shape) for u in g.units)
            sub = g.subblock if (drop and sb is not None) else None
            slots.append(Slot(g.name, (DENSE, *have), units, g.block, subblock=sub))
    return Problem(slots, other_numel=adapter.non_unit_numel())


def _ordered_subblocks(adapter: ModelAdapter):
    by_sub: dict[str, list] = {}
    for g in adapter.groups:
        by_sub.setdefault(g.subblock, []).append(g)
    droppable = {sb.name: sb for sb in adapter.subblocks}
    return [(droppable.get(name), groups) for name, groups in by_sub.items()]


@dataclass(frozen=True)
class Profile:
    """One row per (slot, option) with exact costs and sensitivity measures."""

    table: pd.DataFrame
    key: str

    def proxy(self, column: str = "fitness") -> dict[tuple[str, str], float]:
        return {(r.slot, r.option): float(getattr(r, column)) for r in self.table.itertuples()}

    def features(self) -> dict[str, dict[str, float]]:
        """Per-slot measures (``block_influence`` of sub-blocks, ``outlier_ratio`` of unit slots)."""
        out: dict[str, dict[str, float]] = {}
        first = self.table.drop_duplicates("slot")
        for name in FEATURES:
            vals = {r.slot: float(getattr(r, name)) for r in first.itertuples() if getattr(r, name) == getattr(r, name)}
            if vals:
                out[name] = vals
        return out

    def apply(self, problem: Problem, column: str = "fitness") -> None:
        """Set the problem's additive proxy from ``column`` and attach the per-slot features."""
        problem.set_proxy(self.proxy(column))
        for name, vals in self.features().items():
            problem.set_feature(name, vals)


def slot_measures(problem: Problem, database: Database) -> tuple[dict[tuple[str, str], float], dict[str, dict[str, float]]]:
    """Output error of every (slot, option) and the per-slot features, from the database's calibration.

    A tie group's output error is ``Σ_u ‖(W_u − Ŵ_u)X_u‖² / Σ_u ‖W_u X_u‖²``; a dropped sub-block's is 1.
    Without calibration data in the database every value is NaN.
    """
    nan = float("nan")
    out: dict[tuple[str, str], float] = {}
    influence = database.influence
    feats: dict[str, dict[str, float]] = {"block_influence": {}, "outlier_ratio": {}}
    for s in problem.slots:
        if s.is_subblock:
            out[(s.name, KEEP)], out[(s.name, DROP)] = 0.0, 1.0
            feats["block_influence"][s.name] = influence.get(s.name, nan)
            continue
        norms = [database.unit_stat(u, "output_norm") for u, _ in s.units]
        ratios = [database.unit_stat(u, "outlier_ratio") for u, _ in s.units]
        calibrated = all(v is not None for v in norms)
        total = sum(norms) if calibrated else 0.0  # type: ignore[arg-type]
        numel = [n * k for _, (n, k) in s.units]
        feats["outlier_ratio"][s.name] = (
            sum(r * w for r, w in zip(ratios, numel)) / sum(numel) if calibrated else nan  # type: ignore[operator]
        )
        for o in s.options:
            if o == DENSE:
                out[(s.name, o)] = 0.0
            elif not calibrated or total <= 0:
                out[(s.name, o)] = nan
            else:
                errs = [database.output_error(u, o) for u, _ in s.units]
                out[(s.name, o)] = sum(e * w for e, w in zip(errs, norms)) / total  # type: ignore[operator]
    return out, feats


def profile_table(
    problem: Problem,
    fitness: dict[tuple[str, str], float],
    werr: dict[tuple[str, str], float],
    oerr: dict[tuple[str, str], float] | None = None,
    features: dict[str, dict[str, float]] | None = None,
) -> pd.DataFrame:
    nan = float("nan")
    oerr = oerr or {}
    features = features or {}
    rows = []
    for i, s in enumerate(problem.slots):
        for j, o in enumerate(s.options):
            ref = o in (DENSE, KEEP)
            rows.append(
                {
                    "slot": s.name,
                    "option": o,
                    "kind": "subblock" if s.is_subblock else "units",
                    "block": s.block,
                    "numel": s.numel,
                    "bits": int(problem.coef["avg_bits"][i][j]),
                    "bytes": int(problem.coef["bytes"][i][j]),
                    "zeros": int(problem.coef["sparsity"][i][j]),
                    "avg_bits": float(problem.coef["avg_bits"][i][j]) / s.numel if not s.is_subblock else 0.0,
                    "fitness": 0.0 if ref else fitness[(s.name, o)],
                    "output_error": oerr.get((s.name, o), nan),
                    "weight_error": werr.get((s.name, o), 0.0),
                    **{f: features.get(f, {}).get(s.name, nan) for f in FEATURES},
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def write_profile(profile: Profile, path: Path, provenance: dict) -> None:
    """Write ``profile.parquet`` (atomically) with the key and provenance in the schema metadata."""
    table = pa.Table.from_pandas(profile.table, preserve_index=False)
    meta = {b"layerbudget": json.dumps({"version": PROFILE_VERSION, "key": profile.key, **provenance}).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_profile(path: Path) -> tuple[Profile, dict]:
    """Read a profile written by :func:`write_profile`; :class:`CorruptCache` if damaged."""
    try:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[b"layerbudget"])
    except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
        raise CorruptCache(f"profile {path} is unreadable: {exc}") from None
    if meta.get("version") != PROFILE_VERSION or list(table.column_names) != COLUMNS:
        raise CorruptCache(f"profile {path} has an unexpected version or columns")
    return Profile(table.to_pandas(), meta["key"]), meta


def load_or_build_profile(
    problem: Problem,
    database: Database,
    adapter: ModelAdapter,
    score: Callable[[Candidate], float],
    cache_dir: Path,
    key_parts: dict,
    *,
    progress: bool = True,
    score_many: Callable[[list[Candidate]], list[float]] | None = None,
) -> tuple[Profile, bool]:
    """Reuse the cached profile for this (database, data, fitness, slots) or measure it."""
    slots = [(s.name, list(s.options)) for s in problem.slots]
    key = content_hash({"version": PROFILE_VERSION, "db": database.key, "slots": slots, **key_parts})
    path = profile_file(cache_dir, key)
    recorded = hash_matches(path)
    if recorded is not None:
        try:
            if not recorded:
                raise CorruptCache(f"profile {path} does not match its recorded hash")
            profile, meta = read_profile(path)
            if meta["key"] != key:
                raise CorruptCache(f"profile {path} belongs to another configuration")
            return profile, True
        except CorruptCache as exc:
            notice(f"{exc}; measuring the profile again")
    fitness = one_at_a_time(problem, score, progress=progress, score_many=score_many)
    werr = weight_error(problem, database, adapter.dense_weight)
    oerr, feats = slot_measures(problem, database)
    profile = Profile(profile_table(problem, fitness, werr, oerr, feats), key)
    write_with_hash(path, lambda p: write_profile(profile, p, {"db": database.key, **key_parts}))
    return profile, False
