"""Built-in English texts that ship with every CPython install, usable wherever a text source is named.

- ``pydoc``: ``pydoc_data.topics``, the language reference and library topics that ``help()`` shows;
- ``docstrings``: the docstrings of the public top-level modules of the standard library (their
  module, class and function docstrings of at least ``MIN_WORDS`` words, doctest lines removed),
  read from the sources with :mod:`ast` — nothing is imported, so nothing runs. API documentation
  written by other authors in another register than the reference topics: a second English text
  that needs no download.

Both depend on the Python version that runs them (their sha256 goes into a plan's provenance).
"""

from __future__ import annotations

import ast
import functools
import sysconfig
from pathlib import Path

from layerbudget.errors import LayerbudgetError

PYDOC = "pydoc"
DOCSTRINGS = "docstrings"
MIN_WORDS = 30  # shorter docstrings are mostly one-line summaries or signatures


def builtin_texts() -> tuple[str, ...]:
    """Names of the built-in texts."""
    return (PYDOC, DOCSTRINGS)


def builtin_documents(name: str) -> list[str]:
    """The documents of built-in text ``name`` (see :func:`builtin_texts`)."""
    if name == PYDOC:
        from pydoc_data import topics

        return [topics.topics[k] for k in sorted(topics.topics)]
    if name == DOCSTRINGS:
        return list(stdlib_docstrings())
    raise LayerbudgetError(f"unknown built-in text {name!r}; known: {', '.join(builtin_texts())}")


def _prose(doc: str) -> str:
    """A docstring without its interactive examples (``>>>`` and ``...`` lines)."""
    lines = [line for line in doc.splitlines() if not line.lstrip().startswith((">>>", "... "))]
    return "\n".join(lines).strip()


@functools.lru_cache(maxsize=1)
def stdlib_docstrings() -> tuple[str, ...]:
    """Docstrings of the public top-level standard-library modules, in file and source order, without repeats."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))
    seen: dict[str, None] = {}
    for path in files:
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):  # not this interpreter's syntax, or unreadable
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                text = _prose(doc) if doc else ""
                if len(text.split()) >= MIN_WORDS:
                    seen.setdefault(text)
    if not seen:
        raise LayerbudgetError(f"no standard-library sources with docstrings found under {root}")
    return tuple(seen)
