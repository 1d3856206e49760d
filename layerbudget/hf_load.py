"""Loading Hugging Face models with one-line errors: the device, the family, the config and the weights.

``model.device`` is checked for its spelling when a config loads (:func:`check_device_name`) and for
its presence before a model loads (:func:`require_device`). ``from_pretrained`` fails in many ways on
a damaged model directory (a ``config.json`` with values of the wrong type, a truncated safetensors
file, a ``pytorch_model.bin`` that is not a checkpoint, weights whose shapes disagree with
``config.json``); each becomes a :class:`LayerbudgetError` naming the model. transformers' load
report and warnings are not printed: weights the checkpoint lacks inside the transformer blocks are
an error (the model would be partly random), those it lacks elsewhere (e.g. a pooler) a one-line notice.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator

from torch import nn

from layerbudget.errors import LayerbudgetError
from layerbudget.families import FamilySpec, family_by_name, known_families
from layerbudget.notices import notice

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
_DEVICE_RE = re.compile(r"^(?P<type>[a-z]+)(?::(?P<index>\d+))?$")
EXPECTED = "'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu'"


def check_device_name(name: str, where: str = "model.device") -> None:
    """Raise :class:`LayerbudgetError` unless ``name`` is a device torch can put a model on (``cuda:1``)."""
    m = _DEVICE_RE.match(name) if isinstance(name, str) else None
    if m is None or m["type"] not in DEVICE_TYPES or (m["type"] == "cpu" and m["index"] not in (None, "0")):
        raise LayerbudgetError(f"{where} must be {EXPECTED}, but got {name!r}")


def require_device(name: str, where: str = "model.device") -> None:
    """Raise :class:`LayerbudgetError` unless this torch can use device ``name`` now (built with its
    backend, and the device index exists)."""
    import torch

    check_device_name(name, where)
    kind, _, index = name.partition(":")
    if kind == "cpu":
        return
    if kind == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise LayerbudgetError(
                f"{where} is {name!r}, but this torch ({torch.__version__}) was built without CUDA; "
                "use device = 'cpu' or install a CUDA build of torch"
            )
        available, count = torch.cuda.is_available(), torch.cuda.device_count()
    elif kind == "mps":
        available, count = torch.backends.mps.is_available(), 1
    else:
        xpu = getattr(torch, "xpu", None)
        available = xpu is not None and xpu.is_available()
        count = xpu.device_count() if available else 0
    if not available or count == 0:
        raise LayerbudgetError(f"{where} is {name!r}, but no {kind} device is visible to torch; use device = 'cpu'")
    if index and int(index) >= count:
        raise LayerbudgetError(
            f"{where} is {name!r}, but torch sees {count} {kind} device{'s' if count != 1 else ''} "
            f"({kind}:0{f'..{kind}:{count - 1}' if count > 1 else ''})"
        )


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
