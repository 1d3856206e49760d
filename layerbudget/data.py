"""Token windows from texts: calibration, held-out and evaluation windows of a built-in text, a text file, or strings.

Built-in texts ship with every CPython install (their sha256 goes into a plan's provenance, as they
depend on the Python version): ``pydoc`` is ``pydoc_data.topics``, the reference topics ``help()``
shows; ``docstrings`` the docstrings of the public top-level standard-library modules (module,
class and function docstrings of at least ``MIN_WORDS`` words, doctest lines removed), read with
:mod:`ast` so nothing runs — a second English text, by other authors and in another register.

A text is tokenized as one stream (documents joined by blank lines) and cut into non-overlapping
windows of ``seq_len`` tokens (special tokens such as [CLS]/[SEP] or BOS included). For the
calibration text, the last ``heldout_fraction`` of the tokens is the held-out part and the rest the
calibration part, so the two never overlap and the split does not depend on the seed; the seed picks
which windows are used. The database's calibration statistics (GPTQ/SparseGPT Hessians, Wanda norms,
output errors) come from their own windows of the calibration part, disjoint from the fitness
windows. Further evaluation texts (``data.eval_sources``) give ``heldout_windows`` windows each
(:class:`EvalSet`), drawn with the run's seed; the search never sees them.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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


DEFAULT_CALIBRATION_WINDOWS = 128  # windows of the database's calibration statistics


@dataclass(frozen=True)
class TokenSets:
    """Calibration pool, the calibration and held-out windows drawn from it, and their provenance."""

    calib_pool: torch.Tensor  # [P, S] every calibration window, in text order
    calib: torch.Tensor  # [C, S] the windows used for fitness and profiling
    db_calib: torch.Tensor  # [D, S] windows of the database's calibration statistics (disjoint from calib)
    heldout: torch.Tensor  # [H, S] held-out windows, disjoint from the calibration part
    text_hash: str  # sha256 of the source text
    source: str

    @property
    def seq_len(self) -> int:
        return int(self.calib.shape[1])

    def check_fresh(self, n: int, where: str) -> None:
        """Refuse, before any work, a searcher whose requests would ask for more windows than the pool has."""
        if n > len(self.calib_pool):
            raise LayerbudgetError(
                f"{where} asks for batches of {n} fresh calibration windows but text {self.source!r} gives "
                f"{len(self.calib_pool)} windows of {self.seq_len} tokens; lower its stage windows or "
                "validation_windows, or use a longer text"
            )

    def fresh_calib(self, n: int, generator: np.random.Generator) -> torch.Tensor:
        """``n`` calibration windows drawn from the whole pool (for staged selection on fresh batches)."""
        if n > len(self.calib_pool):
            raise LayerbudgetError(f"asked for {n} calibration windows but the text gives {len(self.calib_pool)}")
        idx = np.sort(generator.choice(len(self.calib_pool), size=n, replace=False))
        return self.calib_pool[torch.from_numpy(idx)]


@dataclass(frozen=True)
class TextSpec:
    """Which text, and how it is cut into windows and drawn from (see :func:`build_token_sets`)."""

    source: str = PYDOC
    seq_len: int = 128
    calib_windows: int = 16
    heldout_windows: int = 16
    heldout_fraction: float = 0.2
    seed: int = 0
    db_windows: int = DEFAULT_CALIBRATION_WINDOWS

    def build(self, tokenizer: object, max_positions: int | None = None) -> TokenSets:
        return build_token_sets(
            tokenizer,
            self.source,
            seq_len=self.seq_len,
            calib_windows=self.calib_windows,
            heldout_windows=self.heldout_windows,
            heldout_fraction=self.heldout_fraction,
            seed=self.seed,
            max_positions=max_positions,
            db_windows=self.db_windows,
        )


def load_documents(source: str | Sequence[str]) -> tuple[list[str], str]:
    """Documents of a text source: a built-in text (``"pydoc"``, ``"docstrings"``, see
    :mod:`layerbudget.data`), a path to a UTF-8 text file, or a list of strings."""
    if isinstance(source, str):
        if source in builtin_texts():
            return builtin_documents(source), source
        path = Path(source).expanduser()
        try:
            is_file = path.is_file()
        except OSError:  # e.g. a long text passed where a path was expected
            is_file = False
        if not is_file:
            raise LayerbudgetError(
                f"text source {source!r} is neither a built-in text ({', '.join(builtin_texts())}) nor an existing text file"
            )
        try:
            return [path.read_text(encoding="utf-8")], str(path)
        except UnicodeDecodeError:
            raise LayerbudgetError(f"text file {source!r} is not UTF-8 text") from None
    docs = list(source)
    if not all(isinstance(d, str) for d in docs):
        raise LayerbudgetError("a text source given as a list must hold only strings")
    return docs, f"{len(docs)} strings"


def _special_affixes(tokenizer: object) -> tuple[list[int], list[int]]:
    """Token ids the tokenizer puts before and after a text ([CLS]/[SEP], BOS, or none)."""
    probe = "layerbudget"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]  # type: ignore[operator]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare) :])
    return [], []


def _windows(ids: list[int], seq_len: int, affixes: tuple[list[int], list[int]]) -> torch.Tensor:
    prefix, suffix = affixes
    body = seq_len - len(prefix) - len(suffix)
    if body < 1:
        raise LayerbudgetError(f"data.seq_len={seq_len} leaves no room next to {len(prefix) + len(suffix)} special tokens")
    rows = [prefix + ids[i : i + body] + suffix for i in range(0, len(ids) - body + 1, body)]
    if not rows:
        return torch.empty(0, seq_len, dtype=torch.long)
    return torch.tensor(rows, dtype=torch.long)


def build_token_sets(
    tokenizer: object,
    source: str | Sequence[str] = PYDOC,
    *,
    seq_len: int = 128,
    calib_windows: int = 16,
    heldout_windows: int = 16,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    max_positions: int | None = None,
    db_windows: int = DEFAULT_CALIBRATION_WINDOWS,
) -> TokenSets:
    """Tokenize ``source`` and draw ``calib_windows`` and ``heldout_windows`` windows of ``seq_len``.

    The database's windows are up to ``db_windows`` other calibration-part windows (all that are left
    after the fitness windows when fewer; the fitness windows themselves when none are left).
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise LayerbudgetError(f"data.heldout_fraction must be in (0, 1), but got {heldout_fraction}")
    if seq_len < 2:
        raise LayerbudgetError(f"data.seq_len must be at least 2, but got {seq_len}")
    if max_positions is not None and seq_len > max_positions:
        raise LayerbudgetError(f"data.seq_len={seq_len} exceeds the model's {max_positions} positions")
    if calib_windows < 1 or heldout_windows < 1:
        raise LayerbudgetError("data.calib_windows and data.heldout_windows must be at least 1")
    if db_windows < 1:
        raise LayerbudgetError(f"options.calibration_windows must be at least 1, but got {db_windows}")
    docs, name = load_documents(source)
    text = "\n\n".join(docs)
    ids: list[int] = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # type: ignore[operator]
    cut = int(round(len(ids) * (1.0 - heldout_fraction)))
    affixes = _special_affixes(tokenizer)
    pool = _windows(ids[:cut], seq_len, affixes)
    held_pool = _windows(ids[cut:], seq_len, affixes)
    if len(pool) < calib_windows:
        raise LayerbudgetError(
            f"text {name!r} is too short: {len(ids)} tokens give {len(pool)} calibration windows of "
            f"{seq_len} tokens but data.calib_windows={calib_windows}; use a longer text or smaller windows"
        )
    if len(held_pool) < heldout_windows:
        raise LayerbudgetError(
            f"text {name!r} is too short: its held-out part gives {len(held_pool)} windows of {seq_len} "
            f"tokens but data.heldout_windows={heldout_windows}; use a longer text or smaller windows"
        )
    rng = np.random.default_rng(seed)
    calib_idx = np.sort(rng.choice(len(pool), size=calib_windows, replace=False))
    held_idx = np.sort(rng.choice(len(held_pool), size=heldout_windows, replace=False))
    rest = np.setdiff1d(np.arange(len(pool)), calib_idx)  # drawn last: the windows above do not move
    db_idx = np.sort(rng.choice(rest, size=min(db_windows, len(rest)), replace=False)) if len(rest) else calib_idx
    return TokenSets(
        calib_pool=pool,
        calib=pool[torch.from_numpy(calib_idx)],
        db_calib=pool[torch.from_numpy(db_idx)],
        heldout=held_pool[torch.from_numpy(held_idx)],
        text_hash=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        source=name,
    )


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


def check_eval_sources(sources: Sequence[str]) -> None:
    """Refuse, before any work, evaluation sources that are missing, unreadable or share a report label
    (the config checks, when it loads, that they are named, distinct and not the calibration text)."""
    labels: dict[str, str] = {}
    for source in sources:
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
