"""Fitness functions (lower is better): distortion of a compressed model's output vs the dense model.

Each fitness reduces a batch to a (numerator, denominator) pair so scores over several batches are
exact ratios of sums, independent of batch size:

- ``hidden_nmse`` (encoders): ``Σ ‖H − H_dense‖² / Σ ‖H_dense‖²`` over final hidden states;
- ``kl`` (causal LMs): mean over positions of ``KL(p_dense ‖ p)`` of next-token distributions;
- ``embedding_cos`` (encoders): mean ``1 − cos`` between mean-pooled sentence embeddings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from layerbudget.errors import LayerbudgetError


class Fitness(ABC):
    """Compares a compressed output to a prepared dense reference, batch by batch."""

    name: str = ""
    tasks: tuple[str, ...] = ()

    def reference(self, dense_out: torch.Tensor) -> torch.Tensor:
        """What to keep of the dense output of one batch."""
        return dense_out.float()

    @abstractmethod
    def partial(self, out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
        """(numerator, denominator) of one batch."""


class HiddenNMSE(Fitness):
    name = "hidden_nmse"
    tasks = ("encoder",)

    def partial(self, out, ref):
        # out, ref: [B, S, D]
        return float((out.float() - ref).pow(2).sum()), float(ref.pow(2).sum())


class EmbeddingCos(Fitness):
    name = "embedding_cos"
    tasks = ("encoder",)

    def reference(self, dense_out):
        return F.normalize(dense_out.float().mean(dim=1), dim=-1)  # [B, D]

    def partial(self, out, ref):
        emb = F.normalize(out.float().mean(dim=1), dim=-1)
        return float((1.0 - (emb * ref).sum(-1)).sum()), float(ref.shape[0])


class KLDivergence(Fitness):
    name = "kl"
    tasks = ("causal",)

    def reference(self, dense_out):
        return F.log_softmax(dense_out.float(), dim=-1)  # [B, S, V]

    def partial(self, out, ref):
        logq = F.log_softmax(out.float(), dim=-1)
        kl = (ref.exp() * (ref - logq)).sum(-1)  # [B, S]
        return float(kl.sum()), float(kl.numel())


_FITNESS: dict[str, type[Fitness]] = {f.name: f for f in (HiddenNMSE, EmbeddingCos, KLDivergence)}
DEFAULT_FOR_TASK = {"encoder": "hidden_nmse", "causal": "kl"}


def known_fitness() -> list[str]:
    return sorted(_FITNESS)


def make_fitness(name: str, task: str) -> Fitness:
    """Look up a fitness by name (``auto`` picks the task's default) and check it fits the task."""
    if name == "auto":
        name = DEFAULT_FOR_TASK[task]
    if name not in _FITNESS:
        raise LayerbudgetError(f"unknown fitness {name!r}; known: auto, {', '.join(known_fitness())}")
    fit = _FITNESS[name]()
    if task not in fit.tasks:
        raise LayerbudgetError(f"fitness {name!r} is for {'/'.join(fit.tasks)} models, but this model is {task}")
    return fit
