"""The model an export stores: the searched weights, every other tensor rounded to fp16 as the plan counts it."""

from __future__ import annotations

import copy

import torch

from layerbudget.model import ModelAdapter
from layerbudget.options import DENSE, DROP, parse_option
from layerbudget.plan import Plan
from layerbudget.profiles.database import Database
from layerbudget.profiles.methods import compress, decode


def stored_reference(adapter: ModelAdapter, plan: Plan, database: Database | None) -> ModelAdapter:
    """A copy of ``adapter``'s dense model with floating tensors rounded through fp16, each compressed unit
    set to its searched variant (from ``database``, or computed for options without calibration) and the
    plan's sub-blocks dropped."""
    adapter.restore()
    model = copy.deepcopy(adapter.model)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.copy_(t.half().to(t.dtype))
    ref = ModelAdapter(model, adapter.spec, model_id="stored")
    for unit, option in plan.units.items():
        if option in (DENSE, DROP):
            continue
        if database is not None:
            weight = database.weight(unit, option)
        else:
            weight = decode(compress(parse_option(option), adapter.dense_weight(unit)), adapter.unit(unit).shape)
        ref.set_weight(unit, weight)
    for name in plan.dropped:
        ref.drop(name)
    return ref
