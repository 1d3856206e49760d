"""The variant database: every (unit, option) compressed once, stored on disk, decoded on demand.

Layout of a database directory (written to a temporary directory and renamed when complete)::

    index.json                 version, key, model, options, per-unit options/skips, file hashes
    units/0000.safetensors     tensors "<option>/<name>" of unit 0 (see profiles.methods)
    ...

The directory name is the key: a hash of the model weights, the option list, the method versions
and (when an option needs calibration) the calibration data. A second run with the same key reuses
it; a file whose sha256 differs from the index is detected and the database rebuilt.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from layerbudget.errors import LayerbudgetError
from layerbudget.model import ModelAdapter
from layerbudget.profiles.cache import atomic_dir, content_hash, file_hash
from layerbudget.profiles.methods import UnitStats, compress, decode
from layerbudget.profiles.options import Option

DB_VERSION = 2


class CorruptCache(LayerbudgetError):
    """A cached artifact does not match its recorded hash."""


class Database:
    """Read access to a built database; decoded weights are kept in a small LRU by bytes."""

    def __init__(self, root: Path, index: dict, *, cache_bytes: int = 1 << 30):
        self.root = Path(root)
        self.index = index
        self._units = {u["name"]: u for u in index["units"]}
        self._decoded: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._held = 0

    @property
    def key(self) -> str:
        return self.index["key"]

    @property
    def options(self) -> list[str]:
        return list(self.index["options"])

    def unit_options(self, unit: str) -> list[str]:
        """Stored options of a unit (``dense`` always included)."""
        return ["dense", *self._units[unit]["options"]]

    @property
    def skipped(self) -> list[dict]:
        """(unit, option, reason) for every option that does not apply to a unit."""
        return [
            {"unit": u["name"], "option": o, "reason": r} for u in self.index["units"] for o, r in u["skipped"].items()
        ]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def tensors(self, unit: str, option: str) -> dict[str, torch.Tensor]:
        info = self._units.get(unit)
        if info is None or option not in info["options"]:
            raise LayerbudgetError(f"database has no variant {option!r} for unit {unit!r}")
        prefix = f"{option}/"
        out = {}
        with safe_open(str(self.root / info["file"]), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if k.startswith(prefix):
                    out[k[len(prefix) :]] = f.get_tensor(k)
        return out

    def weight(self, unit: str, option: str) -> torch.Tensor:
        """The decoded float32 ``[N, K]`` weight of ``unit`` under ``option`` (not for ``dense``)."""
        key = (unit, option)
        w = self._decoded.get(key)
        if w is not None:
            self._decoded.move_to_end(key)
            return w
        info = self._units[unit]
        w = decode(self.tensors(unit, option), tuple(info["shape"]))
        self._decoded[key] = w
        self._held += w.numel() * w.element_size()
        while self._held > self._cache_bytes and len(self._decoded) > 1:
            _, old = self._decoded.popitem(last=False)
            self._held -= old.numel() * old.element_size()
        return w

    def verify(self) -> None:
        """Raise :class:`CorruptCache` if any file differs from the hash recorded in the index."""
        for u in self.index["units"]:
            path = self.root / u["file"]
            if not path.is_file() or file_hash(path) != u["sha256"]:
                raise CorruptCache(f"database file {path} is missing or corrupted")


def database_key(adapter: ModelAdapter, options: Sequence[Option], calib_hash: str | None) -> str:
    needs_calib = any(o.needs_calibration for o in options)
    return content_hash(
        {
            "version": DB_VERSION,
            "model": adapter.weight_hash(),
            "units": [(u.name, u.shape) for u in adapter.units],
            "options": sorted(o.name for o in options),
            "calib": calib_hash if needs_calib else None,
        }
    )


def open_database(root: Path, *, verify: bool = True) -> Database:
    """Open a database directory; raise :class:`CorruptCache` when the index or a file is damaged."""
    try:
        index = json.loads((root / "index.json").read_text())
    except (OSError, ValueError) as exc:
        raise CorruptCache(f"database index {root / 'index.json'} is unreadable: {exc}") from None
    if index.get("version") != DB_VERSION or index.get("key") != root.name:
        raise CorruptCache(f"database {root} has version/key {index.get('version')}/{index.get('key')}")
    db = Database(root, index)
    if verify:
        db.verify()
    return db


def build_database(
    adapter: ModelAdapter,
    options: Sequence[Option],
    root: Path,
    *,
    stats: Callable[[str], UnitStats | None] | None = None,
    progress: bool = True,
) -> Database:
    """Compress every unit under every option into ``root`` (atomically)."""
    stored = [o for o in options if not (o.is_dense or o.is_drop)]
    units_index = []
    with atomic_dir(root) as tmp:
        (tmp / "units").mkdir()
        bar = tqdm(adapter.units, desc="database", unit="unit", disable=not progress, leave=False)
        for i, unit in enumerate(bar):
            dense = adapter.dense_weight(unit.name)
            unit_stats = stats(unit.name) if stats is not None and any(o.needs_calibration for o in stored) else None
            tensors: dict[str, torch.Tensor] = {}
            ok, skipped = [], {}
            for opt in stored:
                reason = opt.applies_to(unit.shape)
                if reason:
                    skipped[opt.name] = reason
                    continue
                for name, t in compress(opt, dense, unit_stats).items():
                    tensors[f"{opt.name}/{name}"] = t.contiguous()
                ok.append(opt.name)
            rel = f"units/{i:04d}.safetensors"
            save_file(tensors, str(tmp / rel))
            units_index.append(
                {"name": unit.name, "shape": list(unit.shape), "file": rel, "sha256": file_hash(tmp / rel),
                 "options": ok, "skipped": skipped}
            )
        index = {
            "version": DB_VERSION,
            "key": root.name,
            "model": {"id": adapter.model_id, "weight_hash": adapter.weight_hash()},
            "options": [o.name for o in options],
            "units": units_index,
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
    return Database(root, index)


def load_or_build_database(
    adapter: ModelAdapter,
    options: Sequence[Option],
    cache_dir: Path,
    *,
    calib_hash: str | None = None,
    stats: Callable[[str], UnitStats | None] | None = None,
    progress: bool = True,
) -> tuple[Database, bool]:
    """Reuse the cached database for this (model, options, data) or build it; returns (db, reused)."""
    root = Path(cache_dir) / "db" / database_key(adapter, options, calib_hash)[:32]
    if root.exists():
        try:
            return open_database(root), True
        except CorruptCache as exc:
            warnings.warn(f"{exc}; rebuilding the database", stacklevel=2)
    return build_database(adapter, options, root, stats=stats, progress=progress), False
