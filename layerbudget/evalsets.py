"""Evaluation texts: windows of texts other than the calibration text, each reported on its own.

A run always measures its final plans on the held-out part of its calibration text
(:class:`~layerbudget.data.TokenSets`). ``data.eval_sources`` names further texts (built-in names
such as ``"docstrings"``, see :mod:`layerbudget.texts`, or UTF-8 text files); each is tokenized as
one stream, cut into non-overlapping windows the same way, and ``heldout_windows`` of them are
drawn with the run's seed. The search never sees them: only the final plans are scored there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layerbudget.data import _special_affixes, _windows, load_documents
from layerbudget.errors import LayerbudgetError
from layerbudget.texts import builtin_texts

HELDOUT = "heldout"  # the label of the calibration text's held-out part


@dataclass(frozen=True)
class EvalSet:
    """Windows of one evaluation text and where they come from."""

    label: str  # "heldout" (the calibration text's held-out part) or "heldout:<name>"
    source: str
    ids: torch.Tensor  # [W, S]
    text_hash: str  # sha256 of the text ("" for the calibration text's part: see TokenSets.text_hash)

    @property
    def windows(self) -> int:
        return int(self.ids.shape[0])


def source_name(source: str) -> str:
    """A short name of a text source: a built-in text's name, else the file's name without suffix."""
    return source if source in builtin_texts() else Path(source).stem


def source_label(source: str) -> str:
    """The column label of an evaluation source in summaries: ``heldout:<name>``."""
    return f"{HELDOUT}:{source_name(source)}"


def check_eval_sources(sources: Sequence[str], calib_source: str) -> None:
    """Refuse, before any work, evaluation sources that are missing, unreadable, repeated or the calibration text."""
    labels: dict[str, str] = {}
    for source in sources:
        if not isinstance(source, str) or not source:
            raise LayerbudgetError(f"data.eval_sources must list text sources, but got {source!r}")
        if source == calib_source:
            raise LayerbudgetError(
                f"data.eval_sources lists the calibration text {source!r}; its held-out part is always evaluated"
            )
        label = source_label(source)
        if label in labels:
            raise LayerbudgetError(
                f"data.eval_sources {labels[label]!r} and {source!r} would both be reported as {label!r}; "
                "rename one of the files"
            )
        labels[label] = source
        if source not in builtin_texts():
            load_documents(source)  # raises a one-line error for a missing, non-UTF-8 or non-file source


def build_eval_sets(
    tokenizer: object,
    sources: Sequence[str],
    *,
    seq_len: int,
    windows: int,
    seed: int = 0,
) -> list[EvalSet]:
    """``windows`` windows of ``seq_len`` tokens of every text in ``sources``, drawn with ``seed``."""
    out = []
    affixes = _special_affixes(tokenizer)
    for source in sources:
        docs, name = load_documents(source)
        text = "\n\n".join(docs)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        ids: list[int] = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # type: ignore[operator]
        pool = _windows(ids, seq_len, affixes)
        if len(pool) < windows:
            raise LayerbudgetError(
                f"evaluation text {name!r} is too short: {len(ids)} tokens give {len(pool)} windows of {seq_len} "
                f"tokens but data.heldout_windows={windows}; use a longer text or fewer windows"
            )
        rng = np.random.default_rng([seed, int(digest[:8], 16)])  # per text: the order of sources does not matter
        idx = np.sort(rng.choice(len(pool), size=windows, replace=False))
        out.append(
            EvalSet(
                label=source_label(source),
                source=name,
                ids=pool[torch.from_numpy(idx)],
                text_hash=digest,
            )
        )
    return out
