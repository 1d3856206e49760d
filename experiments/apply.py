"""Apply a plan to a model: check that it fits, ``compress_`` it in place, and re-measure it.

- :func:`check_plan` refuses, in one line, a plan (or database) made for another model;
  :func:`check_ties` a plan whose tied units (q/k/v, gate/up) differ.
- :func:`compress_` swaps every unit of a model for the variant its plan names (decoded from the
  variant database, or computed on the spot for options that need no calibration) and drops the
  plan's sub-blocks, in place. Its outputs are exactly those of the model the search evaluated.
- :func:`reproduce` rebuilds a plan's model from its experiment config and re-measures its fitness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from layerbudget.errors import LayerbudgetError
from layerbudget.evaluators.fitness import Fitness
from layerbudget.experiments.config import ExperimentConfig
from layerbudget.experiments.prepare import prepare
from layerbudget.families import FamilySpec, family_by_name, family_for_model_type, known_families
from layerbudget.model import ModelAdapter, load_model
from layerbudget.options import DENSE, DROP, parse_option
from layerbudget.plan import Plan
from layerbudget.profiles.database import Database
from layerbudget.profiles.methods import compress, decode


# ----- plan ↔ model checks -------------------------------------------------------------------------
def plan_family(plan: Plan) -> FamilySpec:
    """The plan's model family (``plan.model["family"]``, else the family whose block path fits)."""
    name = plan.model.get("family")
    if name:
        return family_by_name(str(name))
    for fam in known_families():
        spec = family_by_name(fam)
        if all(u.startswith(spec.blocks + ".") for u in plan.units):
            return spec
    raise LayerbudgetError("the plan names no model family and its unit names fit none of the known families")


def tie_groups(plan: Plan) -> list[tuple[str, ...]]:
    """Groups of the plan's units that deployment engines run as one fused layer (q/k/v, gate/up)."""
    spec = plan_family(plan)
    tie_of = {p: group for group in spec.ties for p in group}
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    prefix = spec.blocks + "."
    for unit in plan.units:
        block, _, path = unit[len(prefix):].partition(".") if unit.startswith(prefix) else ("", "", unit)
        if path in tie_of:
            groups.setdefault((block, tie_of[path]), []).append(unit)
    return [tuple(g) for g in groups.values() if len(g) > 1]


def check_ties(plan: Plan) -> None:
    """Raise unless every tie group shares one option (vLLM refuses mixed q/k/v or gate/up schemes)."""
    for group in tie_groups(plan):
        options = {plan.units[u] for u in group}
        if len(options) > 1:
            detail = ", ".join(f"{u.rsplit('.', 1)[-1]}={plan.units[u]}" for u in group)
            raise LayerbudgetError(
                f"tied units must share one option, but {group[0].rsplit('.', 1)[0]} has {detail}"
            )


def check_plan(adapter: ModelAdapter, plan: Plan, database: Database | None = None, *, check_hash: bool = True) -> None:
    """Raise a one-line error unless ``plan`` (and ``database``) were made for this model."""
    names = {u.name for u in adapter.units}
    missing = [u.name for u in adapter.units if u.name not in plan.units]
    unknown = [n for n in plan.units if n not in names]
    if missing or unknown:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} plan unit(s) not in the model (e.g. {unknown[0]!r})")
        if missing:
            parts.append(f"{len(missing)} model unit(s) not in the plan (e.g. {missing[0]!r})")
        raise LayerbudgetError(f"the plan is for a different model ({plan.model.get('id')!r}): {'; '.join(parts)}")
    if check_hash and plan.model["weight_hash"] != adapter.weight_hash():
        raise LayerbudgetError(
            f"the plan is for a different model: its weight hash {plan.model['weight_hash'][:16]} differs from "
            f"{adapter.model_id!r} ({adapter.weight_hash()[:16]})"
        )
    if database is not None:
        db_hash = database.index.get("model", {}).get("weight_hash")
        if db_hash != adapter.weight_hash():
            raise LayerbudgetError(f"the database {database.root} was built for another model (weight hash {str(db_hash)[:16]})")
        for u in database.index["units"]:
            if tuple(u["shape"]) != adapter.unit(u["name"]).shape:
                raise LayerbudgetError(
                    f"the database stores {u['name']} with shape {tuple(u['shape'])}, but the model has "
                    f"{adapter.unit(u['name']).shape}"
                )
    droppable = {sb.name: sb for sb in adapter.subblocks}
    for name in plan.dropped:
        if name not in droppable:
            raise LayerbudgetError(f"the plan drops {name!r}, which is not a droppable sub-block of this model")
    in_dropped = {u for name in plan.dropped for u in droppable[name].units}
    for unit, opt in plan.units.items():
        if (opt == DROP) != (unit in in_dropped):
            why = "but its sub-block is kept" if opt == DROP else "but its sub-block is dropped"
            raise LayerbudgetError(f"the plan gives {unit} option {opt!r} {why}")
        reason = None if opt in (DENSE, DROP) else parse_option(opt).applies_to(adapter.unit(unit).shape)
        if reason:
            raise LayerbudgetError(f"option {opt!r} does not apply to {unit}: {reason}")
    for group in adapter.groups:
        options = {plan.units[u.name] for u in group.units}
        if len(options) > 1:
            raise LayerbudgetError(f"tied units {group.name} must share one option, but the plan gives {sorted(options)}")


# ----- compress_ ----------------------------------------------------------------------------------
def adapter_for(model: nn.Module | ModelAdapter) -> ModelAdapter:
    """``model`` itself when it is an adapter, else a new adapter (family from ``config.model_type``)."""
    if isinstance(model, ModelAdapter):
        return model
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise LayerbudgetError(f"cannot tell the family of a {type(model).__name__}; pass a ModelAdapter")
    name = str(getattr(config, "_name_or_path", "") or type(model).__name__)
    return ModelAdapter(model, family_for_model_type(model_type), model_id=name)


def variant_tensors(adapter: ModelAdapter, database: Database | None, unit: str, option: str) -> dict[str, torch.Tensor]:
    """The stored tensors of ``unit`` under ``option`` (from the database, or computed when it needs no data)."""
    if database is not None:
        return database.tensors(unit, option)
    opt = parse_option(option)
    if opt.needs_calibration:
        raise LayerbudgetError(
            f"option {option!r} needs calibration statistics; pass the database the plan was searched with "
            "(`layerbudget apply PLAN` rebuilds it)"
        )
    return compress(opt, adapter.dense_weight(unit))


def compress_(
    model: nn.Module | ModelAdapter,
    plan: Plan,
    database: Database | None = None,
    *,
    check_hash: bool = True,
) -> ModelAdapter:
    """Make ``model`` hold ``plan`` in place: every unit at its option, the plan's sub-blocks dropped.

    Weights come from ``database`` (the variants the search scored); without one, options that need
    no calibration (``rtn``, ``magnitude``) are computed on the spot. Returns the adapter; its
    :meth:`~layerbudget.model.ModelAdapter.restore` brings back the dense model.
    """
    adapter = adapter_for(model)
    check_plan(adapter, plan, database, check_hash=check_hash)
    adapter.restore()
    try:
        for name in plan.dropped:
            adapter.drop(name)
        for unit, option in plan.units.items():
            if option in (DENSE, DROP):
                continue
            if database is not None:
                weight = database.weight(unit, option)
            else:
                weight = decode(variant_tensors(adapter, None, unit, option), adapter.unit(unit).shape)
            adapter.set_weight(unit, weight)
    except BaseException:
        adapter.restore()  # never leave a half-applied plan behind
        raise
    return adapter


# ----- reproduce ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reproduction:
    """A plan re-applied from scratch and re-measured on its calibration and held-out windows."""

    fitness: float
    heldout: float
    fitness_name: str
    same_calibration: bool  # the calibration tokens hash to what the plan recorded

    def rel_diff(self, recorded: float) -> float:
        return abs(self.fitness - recorded) / max(abs(recorded), 1e-30)


def _measure(adapter: ModelAdapter, ids: torch.Tensor, fitness: Fitness, batch_size: int,
             refs: list[torch.Tensor]) -> float:
    num = den = 0.0
    for chunk, ref in zip(torch.split(ids, batch_size), refs):
        n, d = fitness.partial(adapter.forward(chunk), ref)
        num, den = num + n, den + d
    return num / den if den > 0 else float("nan")


def reproduce(plan: Plan, cfg: ExperimentConfig, *, progress: bool = False) -> Reproduction:
    """Rebuild the model of ``plan`` from ``cfg`` (its database reused from the cache or rebuilt) and re-measure.

    The model is compressed with :func:`compress_` and scored by full forward passes, independently
    of the search's evaluator.
    """
    try:  # reuse the cached database without building anything
        prep = prepare(cfg, progress=progress, build=False)
    except LayerbudgetError:  # no database yet: check the model before paying for one
        probe = load_model(cfg.model.id, family=cfg.model.family, dtype=cfg.model.dtype, device=cfg.model.device)
        check_plan(probe, plan)
        del probe
        prep = prepare(cfg, progress=progress, build=True)
    adapter, tokens, fitness, bs = prep.adapter, prep.tokens, prep.fitness, cfg.data.batch_size
    check_plan(adapter, plan, prep.database)
    adapter.restore()
    refs = {name: [fitness.reference(adapter.forward(c)) for c in torch.split(ids, bs)]
            for name, ids in (("calib", tokens.calib), ("heldout", tokens.heldout))}
    compress_(adapter, plan, prep.database)
    try:
        fit = _measure(adapter, tokens.calib, fitness, bs, refs["calib"])
        held = _measure(adapter, tokens.heldout, fitness, bs, refs["heldout"])
    finally:
        adapter.restore()
    recorded = plan.provenance.get("data", {})
    same = not isinstance(recorded, Mapping) or recorded.get("calib_sha256") in (None, prep.calib_hash)
    return Reproduction(fit, held, fitness.name, same)
