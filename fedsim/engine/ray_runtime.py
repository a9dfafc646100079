"""Ray for a run or a sweep: join the cluster a scenario names, or start a local
runtime for the duration, in one place (the run's launcher and ``fedsim sweep`` both
use it) — and never one that lets anyone in.

Ray 2.55 has no authentication unless ``RAY_AUTH_MODE=token`` is in the environment
when ``ray._raylet`` is first loaded: the mode is read once per process, so it is set
here before ``ray`` is imported, and checked with ``get_authentication_mode`` after.

- A local runtime (fedsim starts it) gets token authentication (the token in
  ``~/.ray/auth_token``, created owner-only if missing), no dashboard, and every
  Ray process bound to 127.0.0.1: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is Ray's
  single-machine mode (its default on macOS and Windows), in which the node address
  is the loopback one and the GCS, raylet, workers and driver listen on it.
  (``_node_ip_address="127.0.0.1"`` does not do this on Linux: Ray 2.55 replaces a
  loopback node address with the machine's.)
- A cluster (``engine.ray_address``) is probed before joining: a gRPC call to its
  GCS without a token must be refused, else it is an unauthenticated cluster and
  fedsim refuses it unless ``engine.allow_unauthenticated_cluster = true`` (then the
  driver joins with ``RAY_AUTH_MODE=disabled``, the only mode such a cluster serves).
- :func:`local_ray` is the same local start for scripts that keep one runtime
  across many runs (the paper tables, the benchmarks, the test suite).
- A runtime the caller started is used as it is, after the same probe; fedsim
  never shuts down what it did not start.

See docs/security.md for what listens where.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedsim.errors import FedsimError, ScenarioError
from fedsim.plugins import pickle_plugins_for_ray

log = logging.getLogger(__name__)

RAY_CONNECT_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 5.0
# Read by Ray once per process (when ray._raylet / ray._private.ray_constants load).
TOKEN_ENV = {"RAY_AUTH_MODE": "token"}
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# A GCS method every Ray version serves; an empty request is a valid one.
PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"
OPT_IN = "engine.allow_unauthenticated_cluster = true"


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


def ray_token() -> str | None:
    """The token this process would send, found where Ray looks for it:
    ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or default_token_path())
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def ensure_private_token() -> None:
    """Give a local runtime a token only its owner can read.

    Ray would create ``~/.ray/auth_token`` itself, readable by everyone (mode 0644
    under the usual umask); on a shared machine that hands the key to every user.
    """
    if os.environ.get("RAY_AUTH_TOKEN", "").strip() or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = default_token_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat()
        if mode.st_uid == os.getuid() and mode.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            path.chmod(0o600)
            log.warning("made %s readable by its owner only (it is Ray's secret)", path)
        return
    with os.fdopen(descriptor, "w") as out:
        out.write(os.urandom(32).hex())


def probe(gcs_address: str, token: str | None, timeout: float = PROBE_TIMEOUT_S) -> str:
    """One gRPC call to a Ray GCS: ``"accepted"``, ``"refused"`` (unauthenticated),
    or why it could not tell. With ``token=None`` the call carries no token."""
    import grpc

    metadata = None if token is None else (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(gcs_address) as channel:
        call = channel.unary_unary(PROBE_METHOD)
        try:
            call(b"", timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                return "refused"
            return f"{error.code().name}: {error.details()}"
    return "accepted"


def _set_environment(values: Mapping[str, str]) -> dict[str, str | None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    return saved


def _restore_environment(saved: Mapping[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _token_mode() -> bool:
    import importlib

    raylet = importlib.import_module("ray._raylet")  # its stub lacks these names
    return bool(raylet.get_authentication_mode() == raylet.AuthenticationMode.TOKEN)


def _loopback_mode() -> bool:
    from ray._private import ray_constants

    return not ray_constants.ENABLE_RAY_CLUSTER


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _mode_fixed_early() -> str:
    if os.environ.get("RAY_AUTH_MODE", "token") != "token" and "ray" not in sys.modules:
        return f"RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']} in the environment: fedsim needs token"
    return (
        "Ray was loaded in this process without token authentication (it reads "
        "RAY_AUTH_MODE once, when ray is first imported): set RAY_AUTH_MODE=token in the "
        "environment, or import fedsim.engine before ray"
    )


def _unauthenticated(source: str, where: str, allow: bool) -> None:
    if allow:
        log.warning("%s has no token authentication: anyone who can reach it can run code", where)
        return
    raise ScenarioError(
        source,
        "engine.ray_address",
        f"a Ray cluster with token authentication ({where} accepts connections without a "
        f"token, so anyone who can reach it can run code; see docs/security.md, or set "
        f"{OPT_IN})",
    )


def _check_cluster(address: str, source: str, allow: bool) -> bool:
    """Before joining ``address`` (host:port of a GCS), without importing ray: True if
    it has token authentication and accepts this machine's token; False if it has none
    and ``allow``; else a one-line error."""
    verdict = probe(address, None)
    if verdict == "accepted":
        _unauthenticated(source, f"the Ray cluster at {address}", allow)
        return False
    if verdict != "refused":
        raise ScenarioError(
            source,
            "engine.ray_address",
            f"the GCS address of a Ray cluster (cannot check its authentication: {verdict})",
            got=address,
        )
    token = ray_token()
    if token is None:
        raise ScenarioError(
            source,
            "engine.ray_address",
            f"the cluster's token on this machine ({address} wants one; copy the head "
            f"node's ~/.ray/auth_token here, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)",
        )
    if probe(address, token) != "accepted":
        raise ScenarioError(
            source,
            "engine.ray_address",
            f"the cluster's token on this machine ({address} refuses this machine's token; "
            f"copy the head node's ~/.ray/auth_token here)",
        )
    return True


def _resolve_auto(source: str) -> str:
    """``"auto"``: ``RAY_ADDRESS``, else the cluster ``ray start`` last started here
    (Ray's ``ray_current_cluster`` file), read without importing ray."""
    from_env = os.environ.get("RAY_ADDRESS", "")
    if from_env and from_env not in ("auto", "local"):
        return from_env
    temp = Path(os.environ.get("RAY_TMPDIR") or "/tmp") / "ray" / "ray_current_cluster"
    try:
        return temp.read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        raise ScenarioError(
            source, "engine.ray_address", "a Ray cluster started on this machine", got="auto"
        ) from None


def _join_address(address: str, source: str, allow: bool) -> tuple[str, bool]:
    """``address`` as Ray takes it, checked before joining (and before ray is imported:
    a driver must have the cluster's authentication mode), and whether it has tokens."""
    if "://" in address:
        if not allow:
            raise ScenarioError(
                source,
                "engine.ray_address",
                f"a GCS address host:port (fedsim cannot check a Ray Client address for token "
                f"authentication; or set {OPT_IN})",
                got=address,
            )
        return address, True
    if address == "auto":
        address = _resolve_auto(source)
    check_ray_address(address, source)
    if "ray" in sys.modules and _loopback_mode() and not _is_loopback(address.rpartition(":")[0]):
        raise FedsimError(
            f"{source}: engine.ray_address: this process started Ray on loopback earlier and "
            f"cannot join {address} (Ray reads that once per process): run it in a new process"
        )
    return address, _check_cluster(address, source, allow)


def _check_running(source: str, allow: bool) -> None:
    """A runtime the caller started: it too must refuse a call without a token."""
    import ray

    if ray.util.client.ray.is_connected():  # a Ray Client session: no GCS to probe
        if not allow:
            raise FedsimError(
                f"{source}: engine.ray_address: fedsim cannot check the Ray Client session "
                f"this process opened for token authentication; set {OPT_IN} to use it"
            )
        return
    gcs = str(ray.get_runtime_context().gcs_address)
    verdict = probe(gcs, None)
    if verdict == "accepted":
        _unauthenticated(source, f"the Ray runtime this process joined ({gcs})", allow)
    elif verdict != "refused":
        raise FedsimError(
            f"{source}: engine.ray_address: cannot check the authentication of the Ray "
            f"runtime this process joined ({gcs}: {verdict})"
        )


def _start_local(source: str, **init: Any) -> None:
    import ray

    if not _token_mode():
        raise FedsimError(f"{source}: {_mode_fixed_early()}")
    if not _loopback_mode():
        log.warning(
            "Ray was imported before fedsim could keep it on loopback: its servers listen "
            "on every interface (token authentication is on)"
        )
    ensure_private_token()
    init = {"logging_level": logging.ERROR, "log_to_driver": True, **init}
    # address="local": never RAY_ADDRESS's cluster by accident
    ray.init(address="local", include_dashboard=False, **init)
    gcs = str(ray.get_runtime_context().gcs_address)
    if probe(gcs, None) != "refused":
        ray.shutdown()
        raise FedsimError(f"{source}: the local Ray runtime accepts calls without a token")


@contextmanager
def ray_runtime(
    address: str | None, source: str, allow_unauthenticated: bool = False
) -> Iterator[str]:
    """The running Ray runtime, else one started here (joining ``address`` if given)
    and shut down on exit. Yields the address other processes join; while inside,
    ``os.environ`` holds the settings (:func:`worker_environment`) that processes
    started here need to join it.

    Plugin files loaded before Ray was imported are registered for pickling by value
    first, so actors and workers need not import them from disk.
    """
    started = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    local = started and (address is None or address == "local")
    joined, tokens = None, True
    if started and not local:
        assert address is not None
        joined, tokens = _join_address(address, source, allow_unauthenticated)
    # A driver speaks its cluster's mode: with tokens its own servers refuse callers
    # without one, so it cannot use a cluster that has none (the opt-in's case).
    mode = {"RAY_AUTH_MODE": "token" if tokens else "disabled"}
    saved = _set_environment({**mode, **(LOOPBACK_ENV if local else {})})
    try:
        import ray

        pickle_plugins_for_ray()
        if local:
            _start_local(source)
        elif started:
            if _token_mode() != tokens:
                raise FedsimError(f"{source}: engine.ray_address: {_mode_mismatch(tokens)}")
            ray.init(address=joined, logging_level=logging.ERROR, log_to_driver=True)
        else:
            _check_running(source, allow_unauthenticated)
        try:
            yield str(ray.get_runtime_context().gcs_address)
        finally:
            if started:
                ray.shutdown()
    finally:
        _restore_environment(saved)


def _mode_mismatch(tokens: bool) -> str:
    if tokens:
        return _mode_fixed_early()
    return (
        "Ray was loaded in this process with token authentication, which cannot join a "
        "cluster without it: run fedsim in a new process with RAY_AUTH_MODE=disabled"
    )


@contextmanager
def local_ray(source: str, **init: Any) -> Iterator[str]:
    """A local Ray runtime started as :func:`ray_runtime` starts one (token
    authentication, loopback, no dashboard), with ``ray.init`` keywords such as
    ``num_cpus``; shut down on exit. For scripts that keep one runtime across many
    runs (the paper tables, the benchmarks, the test suite)."""
    saved = _set_environment({**TOKEN_ENV, **LOOPBACK_ENV})
    try:
        import ray

        pickle_plugins_for_ray()
        _start_local(source, **init)
        try:
            yield str(ray.get_runtime_context().gcs_address)
        finally:
            ray.shutdown()
    finally:
        _restore_environment(saved)


@contextmanager
def flower_ray_environment(source: str) -> Iterator[None]:
    """Around Flower's simulation runtime, which starts Ray itself (when none runs):
    the same token authentication and loopback binding as :func:`ray_runtime`'s local
    start. Call :func:`check_running_ray` from inside the simulation."""
    local = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    saved = _set_environment({**TOKEN_ENV, **(LOOPBACK_ENV if local else {})})
    try:
        if local:
            if not _token_mode():
                raise FedsimError(f"{source}: {_mode_fixed_early()}")
            ensure_private_token()
        yield
    finally:
        _restore_environment(saved)


def check_running_ray(source: str, allow_unauthenticated: bool = False) -> None:
    """The Ray runtime this process is connected to refuses calls without a token
    (unless ``allow_unauthenticated``); else a one-line :class:`FedsimError`."""
    _check_running(source, allow_unauthenticated)


def worker_environment(address: str) -> dict[str, str]:
    """What a process that joins ``address`` (a sweep's worker) must have in its
    environment before it imports ray."""
    host = address.rpartition(":")[0]
    return {**TOKEN_ENV, **(LOOPBACK_ENV if _is_loopback(host) else {})}
