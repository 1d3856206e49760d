"""Loading Hugging Face weights for :func:`layerbudget.model.load_model` with one-line errors.

``from_pretrained`` fails in many ways on a damaged model directory (a ``config.json`` with values
of the wrong type, a truncated safetensors file, a ``pytorch_model.bin`` that is not a checkpoint,
weights whose shapes disagree with ``config.json``); each becomes a :class:`LayerbudgetError`
naming the model. transformers' load report and warnings are not printed: weights the checkpoint
lacks inside the transformer blocks are an error (the model would be partly random), those it
lacks elsewhere (e.g. a pooler) a one-line notice.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from torch import nn

from layerbudget.errors import LayerbudgetError
from layerbudget.families import FamilySpec, family_by_name, known_families
from layerbudget.notices import notice


def first_line(exc: BaseException) -> str:
    """The first line of an error message (with the next one when the first ends in a colon)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def check_family(family: str, model_type: str, model_id: str) -> FamilySpec | None:
    """The spec of an explicit ``family`` after checking it fits ``model_type``; None for ``auto``.

    A model type of another registered family is refused (loading it under this family would fail
    later, after transformers printed its load report); an unregistered type may be forced.
    """
    if family == "auto":
        return None
    spec = family_by_name(family)
    for name in known_families():
        native = family_by_name(name)
        if model_type in native.model_types and native.name != spec.name:
            raise LayerbudgetError(
                f"model.family is {family!r}, but model {model_id!r} has model type {model_type!r}, which is "
                f"family {native.name!r}; use family = 'auto' or {native.name!r}"
            )
    return spec


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Inside the block transformers logs only errors (no load report, no progress bar) and Python
    warnings are not shown."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(previous)


def load_hf_config(path: str, model_id: str) -> object:
    """``AutoConfig.from_pretrained(path)``; an unreadable or invalid ``config.json`` is a one-line error."""
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(path)
    except Exception as exc:  # transformers reading a user's file: any failure means it is unusable
        raise LayerbudgetError(f"could not load model {model_id!r}: {first_line(exc)}") from None


def load_weights(loader: type, path: str, model_id: str, spec: FamilySpec, **kwargs: object) -> nn.Module:
    """``loader.from_pretrained(path, **kwargs)`` with damaged checkpoints turned into one-line errors."""
    try:
        with quiet_transformers():
            model, info = loader.from_pretrained(
                path, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
            )
    except Exception as exc:  # transformers reading a user's files: any failure means they are unusable
        raise LayerbudgetError(
            f"could not load the weights of model {model_id!r}: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        key, ckpt, want = mismatched[0]
        raise LayerbudgetError(
            f"model {model_id!r}: checkpoint weight {key!r} has shape {list(ckpt)} but config.json gives "
            f"{list(want)} ({len(mismatched)} weight{'s' if len(mismatched) != 1 else ''} differ); the weights "
            "and config.json do not belong together"
        )
    missing = sorted(info.get("missing_keys") or ())
    in_blocks = [k for k in missing if k.startswith(spec.blocks + ".")]
    if in_blocks:
        raise LayerbudgetError(
            f"model {model_id!r}: the checkpoint lacks {len(in_blocks)} weight{'s' if len(in_blocks) != 1 else ''} "
            f"of the transformer blocks (first: {in_blocks[0]!r}); they would start random"
        )
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        notice(f"model {model_id!r}: the checkpoint lacks {shown}; they start random (outside the blocks)")
    return model
