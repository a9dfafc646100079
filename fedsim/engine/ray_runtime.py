"""Ray for a run or a sweep: join the cluster a scenario names, or start a local
runtime for the duration, in one place (the run's launcher and ``fedsim sweep`` both
use it)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from fedsim.errors import ScenarioError
from fedsim.plugins import pickle_plugins_for_ray

RAY_CONNECT_TIMEOUT_S = 10.0


def check_ray_address(address: str | None, source: str) -> None:
    """Fail fast on an unreachable ``engine.ray_address`` of the form host:port.

    ``ray.init`` retries such an address for many minutes; a TCP connection
    tells at once. ``auto``, ``local`` and ``ray://`` addresses are left to Ray.
    """
    if address is None or address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ScenarioError(
            source, "engine.ray_address", 'host:port, "auto" or ray://host:port', got=address
        )
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        raise ScenarioError(
            source,
            "engine.ray_address",
            f"the address of a running Ray cluster (cannot connect: {error})",
            got=address,
        ) from error


@contextmanager
def ray_runtime(address: str | None, source: str) -> Iterator[str]:
    """The running Ray runtime, else one started here (joining ``address`` if given)
    and shut down on exit. Yields the address other processes join.

    Plugin files loaded before Ray was imported are registered for pickling by value
    first, so actors and workers need not import them from disk.
    """
    import ray

    pickle_plugins_for_ray()
    started = not ray.is_initialized()
    if started:
        check_ray_address(address, source)
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=True,
        )
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        if started:
            ray.shutdown()
