"""Block-by-block calibration: stream activations through one block at a time and collect statistics.

A 7–8B model cannot keep every block's activations (or every unit's Hessian) at once, so the
profiler works like GPTQ's sequential driver: the calibration windows are run up to the first block
and stopped there (:func:`first_block_inputs`); then each block in turn is run on the current
:class:`Stream` with hooks on its units (:func:`run_block`), which gives

- :class:`UnitStats` of every unit in the block (input Hessian ``2/n Σ x xᵀ`` and ``Σ x_j²``),
- the *influence* of each droppable sub-block, ``1 − mean_t cos(h_before, h_after)`` of the residual
  stream around it (ShortGPT's block influence, per attention/MLP sub-block),
- the block's outputs: the next block's :class:`Stream`.

Only the current block's inputs and its units' Hessians are alive at any time. Every block of a
supported family receives the same extra arguments (attention mask, position embeddings), recorded
once at the first block; a test checks the streamed inputs against a full forward for each family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from layerbudget.errors import LayerbudgetError
from layerbudget.families import DROP_PASSTHROUGH
from layerbudget.model import ModelAdapter
from layerbudget.profiles.hessian import HessianAccumulator
from layerbudget.profiles.methods import UnitStats


@dataclass
class Stream:
    """The inputs of one block for every calibration batch: hidden states and the block's call args."""

    hidden: list[torch.Tensor]  # per batch: [B, S, D]
    calls: list[tuple[tuple, dict]]  # per batch: (extra positional args, keyword args)


@dataclass
class BlockPass:
    """What running one block over the calibration stream produced."""

    stats: dict[str, UnitStats]  # unit name → input statistics
    influence: dict[str, float]  # sub-block name → 1 − mean cos(before, after)
    outputs: Stream  # inputs of the next block


class _Stop(Exception):
    """Raised by the first block's pre-hook to end a forward pass early."""


def _module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


@torch.inference_mode()
def first_block_inputs(adapter: ModelAdapter, ids: torch.Tensor, batch_size: int) -> Stream:
    """Run each batch of ``ids: [C, S]`` only up to the first block and record what it receives."""
    adapter.restore()
    stream = Stream([], [])

    def hook(_mod: torch.nn.Module, args: tuple, kwargs: dict):
        if args:
            hidden, extra, kw = args[0], tuple(args[1:]), dict(kwargs)
        else:
            kw = dict(kwargs)
            hidden, extra = kw.pop("hidden_states"), ()
        stream.hidden.append(hidden)
        stream.calls.append((extra, kw))
        raise _Stop

    handle = adapter.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for chunk in torch.split(ids, batch_size):
            try:
                adapter.forward(chunk)
            except _Stop:
                continue
            raise LayerbudgetError("the model's forward never reached its first block")  # pragma: no cover
    finally:
        handle.remove()
    return stream


def _check_finite(x: torch.Tensor, where: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise LayerbudgetError(f"calibration activations {where} contain NaN or Inf")


@torch.inference_mode()
def run_block(
    adapter: ModelAdapter,
    b: int,
    stream: Stream,
    *,
    units: bool = True,
    influence: bool = False,
) -> BlockPass:
    """Run block ``b`` (as the adapter currently holds it) on ``stream``; collect what is asked."""
    block = adapter.blocks[b]
    block_units = [u for u in adapter.units if u.block == b] if units else []
    device = adapter.device
    acc_dtype = torch.float64 if device.type == "cpu" else torch.float32  # float32 on GPUs: speed, memory
    accs = {u.name: HessianAccumulator(u.shape[1], dtype=acc_dtype, device=device) for u in block_units}
    modules = dict(adapter.model.named_modules())
    handles = []

    def unit_hook(name: str):
        def hook(_mod: torch.nn.Module, args: tuple) -> None:
            _check_finite(args[0], f"entering {name}")
            accs[name].update(args[0])

        return hook

    for u in block_units:
        handles.append(modules[u.name].register_forward_pre_hook(unit_hook(u.name)))

    # sub-block influence: the residual stream before and after each droppable sub-block
    subs = [sb for sb in adapter.subblocks if sb.block == b and sb.name not in adapter.dropped] if influence else []
    rules = {kind: (path, rule) for kind, path, rule in adapter.spec.drop}
    seen: dict[str, tuple[torch.Tensor, torch.Tensor] | torch.Tensor] = {}

    def sub_hook(name: str, rule: str):
        def hook(_mod: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            out = output[0] if isinstance(output, tuple) else output
            if rule == DROP_PASSTHROUGH:  # f(hidden, input_tensor): before = input_tensor
                before = args[1] if len(args) > 1 else kwargs["input_tensor"]
                seen[name] = (before, out)
            else:  # the sub-block's contribution, added to the residual stream
                seen[name] = out

        return hook

    for sb in subs:
        path, rule = rules[sb.kind]
        handles.append(_module(block, path).register_forward_hook(sub_hook(sb.name, rule), with_kwargs=True))

    cos_sum = dict.fromkeys((sb.name for sb in subs), 0.0)
    tokens = 0
    out_hidden: list[torch.Tensor] = []
    try:
        for hidden, (extra, kw) in zip(stream.hidden, stream.calls):
            seen.clear()
            out = block(hidden, *extra, **kw)
            out = out[0] if isinstance(out, tuple) else out
            _check_finite(out, f"leaving block {b}")
            out_hidden.append(out)
            residual = hidden
            for sb in subs:
                got = seen[sb.name]
                if isinstance(got, tuple):
                    before, after = got
                else:
                    before, after = residual, residual + got
                residual = after
                cos_sum[sb.name] += float(F.cosine_similarity(before.float(), after.float(), dim=-1).sum())
            tokens += hidden.shape[0] * hidden.shape[1]
    finally:
        for h in handles:
            h.remove()
    stats = {
        name: UnitStats(hessian=acc.hessian().float().cpu(), x_sqnorm=acc.x_sqnorm().float().cpu())
        for name, acc in accs.items()
    }
    infl = {name: 1.0 - s / max(tokens, 1) for name, s in cos_sum.items()}
    return BlockPass(stats, infl, Stream(out_hidden, stream.calls))


def output_error(weight: torch.Tensor, variant: torch.Tensor, hessian: torch.Tensor) -> tuple[float, float]:
    """``(‖(W − Ŵ) X‖², ‖W X‖²)`` per calibration token, from the input Hessian (``H ∝ X Xᵀ``)."""
    w = weight.float()
    d = w - variant.float()
    h = hessian.float()
    return float(((d @ h) * d).sum()), float(((w @ h) * w).sum())


def outlier_ratio(weight: torch.Tensor, x_sqnorm: torch.Tensor, m: float = 5.0) -> float:
    """OWL's layer outlier ratio: share of Wanda scores ``|W_ij|·‖X_j‖`` above ``m`` × their mean."""
    score = weight.float().abs() * x_sqnorm.float().clamp_min(0).sqrt()[None, :]
    return float((score > m * score.mean()).float().mean())
