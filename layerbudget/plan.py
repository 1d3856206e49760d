"""The per-layer plan: unit name → option, with predicted and measured metrics and provenance.

A plan is data: versioned JSON (``schema = "layerbudget.plan"``, ``version``) that
:meth:`Plan.load` validates field by field, so a damaged or foreign file is refused with a clear
message instead of being half-applied.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from layerbudget.errors import LayerbudgetError
from layerbudget.options import DROP, parse_option
from layerbudget.storage import atomic_write_text

PLAN_SCHEMA = "layerbudget.plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """One option per unit (``drop`` for units of dropped sub-blocks) and what is known about it."""

    model: Mapping[str, str]  # id, weight_hash, family
    units: Mapping[str, str]
    dropped: tuple[str, ...] = ()
    searcher: str = ""
    budget: Mapping[str, float] = field(default_factory=dict)
    predicted: Mapping[str, float] = field(default_factory=dict)  # metrics from the cost table, proxy
    measured: Mapping[str, float] = field(default_factory=dict)  # fitness, heldout
    provenance: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("id", "weight_hash"):
            if not isinstance(self.model.get(key), str):
                raise LayerbudgetError(f"plan.model.{key} must be a string")
        if not self.units:
            raise LayerbudgetError("a plan must assign an option to at least one unit")
        for unit, opt in self.units.items():
            if not isinstance(unit, str) or not isinstance(opt, str):
                raise LayerbudgetError(f"plan.units maps unit names to option names, but got {unit!r}: {opt!r}")
            parse_option(opt)
        for d in self.dropped:
            if not isinstance(d, str):
                raise LayerbudgetError(f"plan.dropped lists sub-block names, but got {d!r}")
        for section in ("budget", "predicted", "measured"):
            for k, v in getattr(self, section).items():
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise LayerbudgetError(f"plan.{section}.{k} must be a number, but got {v!r}")

    @property
    def compressed_units(self) -> dict[str, str]:
        """Units whose option is neither ``dense`` nor ``drop``."""
        return {u: o for u, o in self.units.items() if o not in ("dense", DROP)}

    def to_dict(self) -> dict:
        def clean(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "schema": PLAN_SCHEMA,
            "version": PLAN_VERSION,
            "model": dict(self.model),
            "searcher": self.searcher,
            "budget": dict(self.budget),
            "predicted": {k: clean(v) for k, v in self.predicted.items()},
            "measured": {k: clean(v) for k, v in self.measured.items()},
            "dropped": list(self.dropped),
            "units": dict(self.units),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Plan:
        if not isinstance(data, Mapping) or data.get("schema") != PLAN_SCHEMA:
            raise LayerbudgetError(f"not a layerbudget plan (expected schema {PLAN_SCHEMA!r})")
        if data.get("version") != PLAN_VERSION:
            raise LayerbudgetError(f"plan version {data.get('version')!r} is not supported (expected {PLAN_VERSION})")
        expected = {"schema", "version", "model", "searcher", "budget", "predicted", "measured", "dropped", "units", "provenance"}
        unknown = sorted(set(data) - expected)
        if unknown:
            raise LayerbudgetError(f"plan has unknown fields {unknown}")
        for key in ("model", "units", "budget", "predicted", "measured", "provenance"):
            if not isinstance(data.get(key, {}), Mapping):
                raise LayerbudgetError(f"plan.{key} must be an object")
        if not isinstance(data.get("dropped", []), list):
            raise LayerbudgetError("plan.dropped must be a list")

        def nums(d: object) -> dict[str, float]:
            return {k: (math.nan if v is None else v) for k, v in dict(d).items()}  # type: ignore[call-overload]

        return cls(
            model=dict(data["model"]),  # type: ignore[call-overload]
            units=dict(data["units"]),  # type: ignore[call-overload]
            dropped=tuple(data.get("dropped", [])),  # type: ignore[arg-type]
            searcher=str(data.get("searcher", "")),
            budget=nums(data.get("budget", {})),
            predicted=nums(data.get("predicted", {})),
            measured=nums(data.get("measured", {})),
            provenance=dict(data.get("provenance", {})),  # type: ignore[call-overload]
        )

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        p = Path(path)
        if not p.is_file():
            raise LayerbudgetError(f"plan file {str(path)!r} does not exist")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise LayerbudgetError(f"plan file {str(path)!r} is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that decide a plan's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("layerbudget", "torch", "transformers", "numpy", "pulp", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
