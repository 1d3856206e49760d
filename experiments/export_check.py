"""The check every exporter runs first: the plan was made for this model (and this database).

Every format refuses a plan whose unit names, shapes or weights differ from the model it is exported
for — before anything is written — with the same one-line errors as ``--format checkpoint`` and
``layerbudget apply``: a unit the model lacks, a model unit the plan misses, an option that does not
fit a unit's shape, another model's weight hash, broken tie groups (q/k/v, gate/up), drops of
sub-blocks the model cannot drop.
"""

from __future__ import annotations

from pathlib import Path

from layerbudget.errors import LayerbudgetError
from layerbudget.experiments.apply import check_plan, check_ties
from layerbudget.model import ModelAdapter, load_model
from layerbudget.plan import Plan
from layerbudget.profiles.database import Database


def plan_model_id(plan: Plan) -> str:
    """The model the plan was searched on, as its experiment config names it (``default``, a path, a hub id)."""
    config = plan.provenance.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict) and isinstance(model.get("id"), str):
        return model["id"]
    raise LayerbudgetError("the plan stores no experiment config naming its model; pass the model explicitly")


def load_plan_model(plan: Plan, model: str | Path | ModelAdapter | None = None) -> ModelAdapter:
    """``model`` as an adapter: itself, loaded from a directory or hub id, or (``None``) the plan's own model."""
    if isinstance(model, ModelAdapter):
        return model
    model_id = plan_model_id(plan) if model is None else str(model)
    return load_model(model_id, family=str(plan.model.get("family") or "auto"))


def check_export(plan: Plan, adapter: ModelAdapter, database: Database | None = None) -> None:
    """Raise a one-line :class:`LayerbudgetError` unless ``plan`` (and ``database``) fit ``adapter``'s model."""
    check_ties(plan)
    check_plan(adapter, plan, database)
