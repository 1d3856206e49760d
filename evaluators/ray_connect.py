"""Connecting the driver to Ray: to the cluster at an address, or to a new, quiet local instance.

Without an address (and without ``RAY_ADDRESS`` in the environment) a new local instance is
started, never a cluster found in Ray's temp directory. A local instance belongs to the run, so
Ray's driver-side notices (token authentication and the like) are not shown; connecting to a
cluster leaves Ray's logging as it is, so its warnings stay visible.
"""

from __future__ import annotations

import os
import socket

import ray

from layerbudget.errors import LayerbudgetError

ENV_ADDRESS = "RAY_ADDRESS"


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` or ``ray://host:port``; None for ``auto``/``local``."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LayerbudgetError(f"Ray address must look like host:port or ray://host:port, but got {address!r}")
    return host.strip("[]"), int(port)


def _probe(address: str, timeout: float) -> None:
    """Fail fast with a clear error when nothing listens at ``address`` (ray.init would retry for minutes)."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as exc:
        raise LayerbudgetError(
            f"cannot reach a Ray cluster at {address!r} ({exc.strerror or exc}); start one with `ray start --head` "
            "or pass the head node's host:port"
        ) from None


def check_address(address: str | None = None, *, timeout: float = 10.0) -> None:
    """Raise a one-line error now when ``address`` (else ``RAY_ADDRESS``) names a cluster nothing
    listens at; no address (a new local instance) is fine."""
    address = address or os.environ.get(ENV_ADDRESS) or None
    if address is not None:
        _probe(address, timeout)


def _same_address(a: str, b: str) -> bool:
    ha, hb = _host_port(a), _host_port(b)
    if ha is None or hb is None:
        return True
    try:
        return ha[1] == hb[1] and socket.gethostbyname(ha[0]) == socket.gethostbyname(hb[0])
    except OSError:
        return ha == hb


def connect(address: str | None = None, *, timeout: float = 30.0) -> bool:
    """Connect to the Ray cluster at ``address`` (else ``RAY_ADDRESS``), or reuse the current session,
    or start a new local instance.

    Returns True when this call started (and so owns) a local Ray instance.
    """
    if address is None:
        address = os.environ.get(ENV_ADDRESS) or None
    if address is not None:
        _probe(address, timeout)
    if ray.is_initialized():
        if address is not None and "://" not in address:
            current = ray.get_runtime_context().gcs_address
            if not _same_address(address, current):
                raise LayerbudgetError(
                    f"this process is already connected to the Ray cluster at {current}, not {address!r}; "
                    "call ray.shutdown() first or pass that address"
                )
        return False
    local = address is None
    try:
        # configure_logging: Ray's own driver-side logger goes to ERROR, so a local start prints nothing
        ray.init(
            address="local" if local else address, include_dashboard=False, logging_level="ERROR",
            configure_logging=local,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LayerbudgetError(f"cannot connect to Ray at {address or 'a new local instance'!r}: {first}") from None
    return local
