"""Calibration statistics of every unit's inputs (Hessian, squared column norms) from a dense pass."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from layerbudget.errors import LayerbudgetError
from layerbudget.model import ModelAdapter
from layerbudget.profiles.hessian import HessianAccumulator
from layerbudget.profiles.methods import UnitStats


class CalibrationStats:
    """Runs the dense model over calibration windows once (on first use) and serves :class:`UnitStats`."""

    def __init__(self, adapter: ModelAdapter, ids: torch.Tensor, *, batch_size: int = 8, progress: bool = True):
        self.adapter = adapter
        self.ids = ids  # [C, S]
        self.batch_size = batch_size
        self.progress = progress
        self._stats: dict[str, UnitStats] | None = None

    def __call__(self, unit: str) -> UnitStats:
        if self._stats is None:
            self._stats = self._collect()
        return self._stats[unit]

    @torch.inference_mode()
    def _collect(self) -> dict[str, UnitStats]:
        adapter = self.adapter
        adapter.restore()
        accs = {u.name: HessianAccumulator(u.shape[1]) for u in adapter.units}
        modules = dict(adapter.model.named_modules())

        def make_hook(name: str):
            def hook(_mod: torch.nn.Module, args: tuple) -> None:
                x = args[0]  # [B, S, K]
                if not torch.isfinite(x).all():
                    raise LayerbudgetError(f"calibration activations entering {name} contain NaN or Inf")
                accs[name].update(x)

            return hook

        handles = [modules[u.name].register_forward_pre_hook(make_hook(u.name)) for u in adapter.units]
        try:
            batches = torch.split(self.ids, self.batch_size)
            for chunk in tqdm(batches, desc="calibration", unit="batch", disable=not self.progress, leave=False):
                adapter.forward(chunk)
        finally:
            for h in handles:
                h.remove()
        return {
            name: UnitStats(hessian=acc.hessian().float(), x_sqnorm=acc.x_sqnorm().float())
            for name, acc in accs.items()
        }
