"""Notices for the user (a cache entry rebuilt, weights a checkpoint lacks): plain lines, not Python warnings.

Library code calls :func:`notice`; it goes to the ``layerbudget`` logger at WARNING level, which
prints the bare message on stderr when nothing is configured, and which API users can silence or
redirect like any logger. The command line shows notices as ``note: <message>`` lines
(:func:`show_notices`).
"""

from __future__ import annotations

import logging
import sys

LOGGER = "layerbudget"


def notice(message: str) -> None:
    """Tell the user about something that went right in an unexpected way (one line, no file or line number)."""
    logging.getLogger(LOGGER).warning(message)


class _StderrNotes(logging.Handler):
    """Writes each record as ``note: <message>`` to whatever ``sys.stderr`` is at that moment."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"note: {record.getMessage()}", file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def show_notices() -> None:
    """Print notices as ``note: …`` lines on stderr (idempotent; the command line calls it once per command)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _StderrNotes) for h in logger.handlers):
        logger.addHandler(_StderrNotes(logging.WARNING))
    logger.setLevel(logging.WARNING)
