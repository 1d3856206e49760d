"""layerbudget: search for per-layer compression settings under a global budget."""

__version__ = "0.1.0"
