"""``model.device`` names: their spelling is checked when a config loads, their presence before a model loads."""

from __future__ import annotations

import re

from layerbudget.errors import LayerbudgetError

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
