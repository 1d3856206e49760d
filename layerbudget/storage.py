"""Files: the cache directory and where each cached artifact lies in it, shipped package data,
content hashes, and atomic writes (a temporary sibling, then a rename: a file is whole or absent)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from layerbudget.errors import LayerbudgetError

ENV_CACHE = "LAYERBUDGET_CACHE"


# ----- where things lie ---------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$LAYERBUDGET_CACHE``, else ``$XDG_CACHE_HOME/layerbudget``, else ``~/.cache/layerbudget``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "layerbudget"


def cache_dir_or_default(cache_dir: str | Path | None) -> Path:
    """``cache_dir`` (``~`` expanded) when given, else :func:`default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def database_dir(cache_dir: str | Path, key: str) -> Path:
    """The directory of the variant database whose content key is ``key``."""
    return Path(cache_dir) / "db" / key[:32]


def profile_file(cache_dir: str | Path, key: str) -> Path:
    """The sensitivity profile whose content key is ``key``."""
    return Path(cache_dir) / "profile" / f"{key[:32]}.parquet"


def latency_file(cache_dir: str | Path, target: str, key: str) -> Path:
    """The latency table of ``target`` whose content key is ``key``."""
    return Path(cache_dir) / "latency" / f"{target}-{key[:24]}.parquet"


def package_dir(package: str) -> Path:
    """The first folder of ``package`` (e.g. ``"layerbudget.experiments"``) that exists on disk.

    The packages are namespace portions, and an editable install adds a non-directory entry to
    their search path, which ``importlib.resources.files`` refuses before Python 3.13; the import
    spec finds the folder the same way for a wheel and for an editable install.
    """
    spec = importlib.util.find_spec(package)
    for entry in (spec.submodule_search_locations or []) if spec is not None else []:
        if Path(entry).is_dir():
            return Path(entry)
    raise LayerbudgetError(f"package {package!r} has no folder on disk; reinstall layerbudget")


# ----- hashes -------------------------------------------------------------------------------------
def content_hash(obj: object) -> str:
    """sha256 of a JSON-serialisable object with sorted keys (stable across runs)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----- atomic writes ------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``final`` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer to fill; it becomes ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    ``durable``: the data and the rename are synced to disk before returning (what a checkpoint
    that must survive a crash needs), where the file system allows it.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    if durable:
        with contextlib.suppress(OSError):  # directories cannot be synced everywhere
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_with_hash(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` atomically with ``write(tmp_path)`` and record its sha256 in ``path.sha256``."""
    with atomic_path(path) as tmp:
        write(tmp)
    path.with_suffix(".sha256").write_text(file_hash(path))


def hash_matches(path: Path) -> bool | None:
    """Whether ``path`` agrees with its ``.sha256`` record (see :func:`write_with_hash`); None when either is missing."""
    sidecar = path.with_suffix(".sha256")
    if not (path.exists() and sidecar.exists()):
        return None
    return file_hash(path) == sidecar.read_text().strip()
