"""The error type for bad user input: one line naming what is wrong and what would be right."""

from __future__ import annotations


class LayerbudgetError(ValueError):
    """Raised for bad input (config, model path, budget, options, data); the CLI prints it and exits 2."""
