"""The variant database: every (unit, option) compressed once, stored on disk, decoded on demand.

Layout of a database directory (written to a temporary directory and renamed when complete)::

    index.json                 version, key, model, options, calibration, sub-block influence, and per
                               unit: options/skips, file hash, output error of every variant,
                               output norm and outlier ratio
    index.sha256               sha256 of index.json (an edit that keeps it valid JSON is caught too)
    units/0000.safetensors     tensors "<option>/<name>" of unit 0 (see profiles.methods)
    ...

The directory name is the key: a hash of the model weights, the option list, the format version,
the calibration data and (when an option needs calibration) where its inputs come from. A second run with the same key reuses
it; a file whose sha256 differs from the index, or an index whose sha256 differs from
``index.sha256``, is detected and the database rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from layerbudget.errors import LayerbudgetError
from layerbudget.model import ModelAdapter
from layerbudget.notices import notice
from layerbudget.options import Option
from layerbudget.profiles.calibration import first_block_inputs, outlier_ratio, output_error, run_block
from layerbudget.profiles.methods import UnitStats, compress, decode
from layerbudget.storage import atomic_dir, content_hash, database_dir, file_hash

DB_VERSION = 5  # 5: codes packed in halfword units (packed format version 3)
INDEX_HASH = "index.sha256"  # the sha256 of index.json, written beside it


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

    def output_error(self, unit: str, option: str) -> float | None:
        """Relative output error ``‖(W − Ŵ)X‖² / ‖WX‖²`` of a stored variant (``None`` without calibration)."""
        errors = self._units[unit].get("output_error")
        return None if errors is None else errors.get(option)

    def unit_stat(self, unit: str, key: str) -> float | None:
        """A per-unit calibration measure (``output_norm``, ``outlier_ratio``); ``None`` when absent."""
        return self._units[unit].get(key)

    @property
    def influence(self) -> dict[str, float]:
        """Sub-block name → ``1 − mean cos`` of the residual stream around it (empty without calibration)."""
        return dict(self.index.get("influence", {}))

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
        """Raise :class:`CorruptCache` if the index or any file differs from the hash recorded for it."""
        index, recorded = self.root / "index.json", self.root / INDEX_HASH
        try:
            same = index.is_file() and file_hash(index) == recorded.read_text().strip()
        except OSError:
            same = False
        if not same:
            raise CorruptCache(f"database index {index} is missing, edited or corrupted (it differs from {INDEX_HASH})")
        for u in self.index["units"]:
            path = self.root / u["file"]
            if not path.is_file() or file_hash(path) != u["sha256"]:
                raise CorruptCache(f"database file {path} is missing or corrupted")


INPUT_MODES = ("dense", "compressed")


def calib_digest(calib: torch.Tensor | None) -> str | None:
    """sha256 of the calibration token ids (``None`` without calibration data)."""
    return None if calib is None else hashlib.sha256(calib.numpy().tobytes()).hexdigest()


def database_key(adapter: ModelAdapter, options: Sequence[Option], calib_hash: str | None, inputs: str = "dense") -> str:
    return content_hash(
        {
            "version": DB_VERSION,
            "model": adapter.weight_hash(),
            "units": [(u.name, u.shape) for u in adapter.units],
            "options": sorted(o.name for o in options),
            "calib": calib_hash,
            "inputs": inputs if any(o.needs_calibration for o in options) else "dense",
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
    calib: torch.Tensor | None = None,
    batch_size: int = 8,
    inputs: str = "dense",
    progress: bool = True,
) -> Database:
    """Compress every unit under every option into ``root`` (atomically), one block at a time.

    With calibration token ids ``calib: [C, S]`` the blocks are streamed (:mod:`.calibration`): each
    unit's input statistics feed GPTQ/SparseGPT/Wanda and the output error of every variant, and
    each sub-block's influence is recorded. ``inputs="compressed"`` computes the statistics that a
    calibrated option uses from the model whose earlier blocks already hold that option (GPTQ's
    sequential mode; one extra stream per calibrated option); ``"dense"`` uses the dense model's.
    """
    if inputs not in INPUT_MODES:
        raise LayerbudgetError(f"calibration inputs must be one of {INPUT_MODES}, but got {inputs!r}")
    stored = [o for o in options if not (o.is_dense or o.is_drop)]
    calibrated = [o for o in stored if o.needs_calibration]
    if calibrated and calib is None:
        raise LayerbudgetError(f"options {[o.name for o in calibrated]} need calibration data, but none was given")
    for unit in adapter.units:
        if not bool(torch.isfinite(adapter.dense_weight(unit.name)).all()):
            raise LayerbudgetError(f"unit {unit.name} has NaN or Inf weights; it cannot be profiled")
    adapter.restore()
    units_index: list[dict] = []
    influence: dict[str, float] = {}
    with atomic_dir(root) as tmp:
        (tmp / "units").mkdir()
        stream = first_block_inputs(adapter, calib, batch_size) if calib is not None else None
        sequential = dict.fromkeys((o.name for o in calibrated), stream) if inputs == "compressed" else {}
        bar = tqdm(range(adapter.num_blocks), desc="database", unit="block", disable=not progress, leave=False)
        for b in bar:
            dense_pass = run_block(adapter, b, stream, influence=True) if stream is not None else None
            if dense_pass is not None:
                influence.update(dense_pass.influence)
            own_stats: dict[str, dict[str, UnitStats]] = {}
            for name, seq in sequential.items():
                own_stats[name] = run_block(adapter, b, seq).stats
            block_units = [(i, u) for i, u in enumerate(adapter.units) if u.block == b]
            variants: dict[str, dict[str, torch.Tensor]] = {name: {} for name in sequential}
            for i, unit in block_units:
                dense_stats = dense_pass.stats[unit.name] if dense_pass is not None else None
                entry = _build_unit(tmp, i, unit, adapter.dense_weight(unit.name), stored, dense_stats, own_stats)
                units_index.append(entry.pop("_index"))
                for name in sequential:
                    if name in entry["variants"]:
                        variants[name][unit.name] = entry["variants"][name]
            for name in sequential:  # advance each option's stream through its compressed block
                for unit_name, w in variants[name].items():
                    adapter.set_weight(unit_name, w)
                sequential[name] = run_block(adapter, b, sequential[name], units=False).outputs
                adapter.restore()
            if dense_pass is not None:
                stream = dense_pass.outputs
        index = {
            "version": DB_VERSION,
            "key": root.name,
            "model": {"id": adapter.model_id, "weight_hash": adapter.weight_hash()},
            "options": [o.name for o in options],
            "calibration": None
            if calib is None
            else {"windows": int(calib.shape[0]), "tokens": int(calib.numel()), "inputs": inputs},
            "influence": influence,
            "units": units_index,
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
        (tmp / INDEX_HASH).write_text(file_hash(tmp / "index.json") + "\n")
    return Database(root, index)


def _build_unit(
    tmp: Path,
    i: int,
    unit,
    dense: torch.Tensor,
    stored: Sequence[Option],
    dense_stats: UnitStats | None,
    own_stats: dict[str, dict[str, UnitStats]],
) -> dict:
    """Compress one unit under every option; write its file; return its index entry and variants."""
    tensors: dict[str, torch.Tensor] = {}
    ok, skipped, errors = [], {}, {}
    variants: dict[str, torch.Tensor] = {}
    for opt in stored:
        reason = opt.applies_to(unit.shape)
        if reason:
            skipped[opt.name] = reason
            continue
        stats = own_stats[opt.name][unit.name] if opt.name in own_stats else dense_stats
        packed = compress(opt, dense, stats)
        for name, t in packed.items():
            tensors[f"{opt.name}/{name}"] = t.contiguous()
        ok.append(opt.name)
        if dense_stats is not None or opt.name in own_stats:
            variant = decode(packed, unit.shape)
            if opt.name in own_stats:  # kept only for advancing that option's stream
                variants[opt.name] = variant
            if dense_stats is not None:
                num, den = output_error(dense, variant, dense_stats.hessian)
                errors[opt.name] = num / den if den > 0 else 0.0
    rel = f"units/{i:04d}.safetensors"
    save_file(tensors, str(tmp / rel))
    entry = {"name": unit.name, "shape": list(unit.shape), "file": rel, "sha256": file_hash(tmp / rel),
             "options": ok, "skipped": skipped}
    if dense_stats is not None:
        entry["output_error"] = errors
        entry["outlier_ratio"] = outlier_ratio(dense, dense_stats.x_sqnorm)
        entry["output_norm"] = output_error(dense, dense, dense_stats.hessian)[1]
    return {"_index": entry, "variants": variants}


def open_cached_database(
    adapter: ModelAdapter, options: Sequence[Option], cache_dir: Path, *, calib: torch.Tensor | None, inputs: str = "dense"
) -> Database:
    """The cached database for this (model, options, data, inputs); a one-line error when it was never built."""
    root = database_dir(cache_dir, database_key(adapter, options, calib_digest(calib), inputs))
    if not root.exists():
        raise LayerbudgetError(f"database {root} does not exist; run the experiment once to build it")
    return open_database(root)


def load_or_build_database(
    adapter: ModelAdapter,
    options: Sequence[Option],
    cache_dir: Path,
    *,
    calib: torch.Tensor | None = None,
    batch_size: int = 8,
    inputs: str = "dense",
    progress: bool = True,
) -> tuple[Database, bool]:
    """Reuse the cached database for this (model, options, data, inputs) or build it; (db, reused)."""
    root = database_dir(cache_dir, database_key(adapter, options, calib_digest(calib), inputs))
    if root.exists():
        try:
            return open_database(root), True
        except CorruptCache as exc:
            notice(f"{exc}; rebuilding the database")
    db = build_database(adapter, options, root, calib=calib, batch_size=batch_size, inputs=inputs, progress=progress)
    return db, False
