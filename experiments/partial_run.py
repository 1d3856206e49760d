"""The resumable state of an unfinished run, ``RUN_DIR.partial/``: its config and searcher checkpoints.

The directory comes into existence, whole (config and ``checkpoints/``, through a temporary
sibling and a rename), just before the first checkpoint is written, so a run that fails before it
has anything to resume (bad model, data, budget, Ray address, searcher parameters) leaves nothing
behind. A fresh run that fails on bad input removes the directory it created (its checkpoints
belong to a config that has to change); an interrupted or crashed run keeps it for ``--resume``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from layerbudget.experiments.config import ExperimentConfig
from layerbudget.storage import atomic_dir

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"


def partial_dir(run_dir: Path) -> Path:
    """Where an unfinished run keeps its config and searcher checkpoints until it completes."""
    return run_dir.with_name(run_dir.name + ".partial")


def has_checkpoints(partial: Path) -> bool:
    """True when ``partial`` holds at least one searcher checkpoint (something worth resuming)."""
    return any((partial / CHECKPOINTS).glob("*.ckpt"))


class PartialRun:
    """``RUN_DIR.partial/`` of one invocation: created on the first checkpoint, or reused on resume."""

    def __init__(self, run_dir: Path, cfg: ExperimentConfig, *, resume: bool = False):
        self.path = partial_dir(run_dir)
        self.cfg = cfg
        self.resume = resume
        self.created = False  # by this invocation

    def checkpoint(self, name: str) -> Path:
        """The checkpoint file of one (budget, searcher) search, e.g. ``b0-ilp``."""
        return self.path / CHECKPOINTS / f"{name}.ckpt"

    def start(self) -> None:
        """Called before the first search: a fresh run (``--overwrite``) must not find another run's
        checkpoints there, so a stale directory goes now (not earlier: a run that fails on its model
        or data leaves it as it was)."""
        if not self.resume and not self.created and self.path.exists():
            shutil.rmtree(self.path)

    def ensure(self) -> None:
        """Create the directory unless this run resumes or already created it."""
        if self.resume or self.created:
            return
        with atomic_dir(self.path) as tmp:
            (tmp / CHECKPOINTS).mkdir()
            (tmp / CONFIG).write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
        self.created = True

    def discard(self) -> None:
        """Remove the directory if this invocation created it (bad input: nothing there to resume)."""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            self.created = False

    def finish(self) -> None:
        """The run is complete: its resumable state goes."""
        shutil.rmtree(self.path, ignore_errors=True)
