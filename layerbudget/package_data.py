"""Where the files shipped inside a ``layerbudget.*`` package (experiment TOMLs, profile data) lie on disk.

The packages are namespace portions, and an editable install adds a non-directory entry to their
search path, which ``importlib.resources.files`` refuses before Python 3.13; this looks the package
up with its import spec instead, the same way for a wheel and for an editable install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from layerbudget.errors import LayerbudgetError


def package_dir(package: str) -> Path:
    """The first folder of ``package`` (e.g. ``"layerbudget.experiments"``) that exists on disk."""
    spec = importlib.util.find_spec(package)
    for entry in (spec.submodule_search_locations or []) if spec is not None else []:
        if Path(entry).is_dir():
            return Path(entry)
    raise LayerbudgetError(f"package {package!r} has no folder on disk; reinstall layerbudget")
