"""The engines' launchers: start an engine for a run's setup, map clients to its
nodes, run the session, and shut the engine down whatever happens.

- ``ray``: a pool of long-lived Ray actors (:class:`fedsim.engine.ray_grid.RayGrid`);
- ``inline``: every client served in this process (no Ray needed);
- ``flower``: Flower's own simulation runtime, for parity checks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedsim import keys
from fedsim.client.app import WHOAMI
from fedsim.config import Scenario
from fedsim.engine.identity import node_id_of
from fedsim.engine.node_grid import NodeGrid
from fedsim.engine.serving import CohortPolicy
from fedsim.plugins import pickle_plugins_for_ray
from fedsim.results import RunWriter
from fedsim.simulation.session import RunControl, run_session
from fedsim.simulation.setup import RunSetup

# The longest a Ray actor may take to start (import torch, open the data): not the
# clients' time, so not engine.timeout unless that is longer.
ACTOR_START_TIMEOUT_S = 300.0

Launcher = Callable[[RunSetup, RunWriter, RunControl], ArrayRecord]


def default_num_actors(scenario: Scenario, resources: dict[str, float]) -> int:
    """``engine.num_actors``, else as many as the cluster's CPUs (and GPUs) allow."""
    engine = scenario.engine
    if engine.num_actors is not None:
        return min(engine.num_actors, scenario.data.num_clients)
    by_cpu = int(resources.get("CPU", 1) // engine.num_cpus_per_client)
    count = by_cpu
    if engine.num_gpus_per_client > 0:
        count = min(count, int(resources.get("GPU", 0) // engine.num_gpus_per_client))
    return max(1, min(count, scenario.data.num_clients))


def cohort_policy(scenario: Scenario) -> CohortPolicy:
    """The scenario's ``engine.cohort`` settings, as the engines take them."""
    return CohortPolicy(scenario.engine.cohort, scenario.engine.cohort_memory_mb)


def client_nodes(num_clients: int) -> dict[int, int]:
    """Client id → node id on fedsim's own engines (fixed, unlike Flower's)."""
    return {c: node_id_of(c) for c in range(num_clients)}


@contextlib.contextmanager
def started_grid(
    scenario: Scenario, app: ClientApp, kind: str, run_config: dict[str, Any] | None = None
) -> Iterator[NodeGrid]:
    """fedsim's own engine ``kind`` ("ray" or "inline") with ``scenario``'s engine settings,
    serving ``app`` on ``data.num_clients`` nodes (``run_config`` in their Contexts); shut
    down on exit whatever happens."""
    engine = scenario.engine
    num_clients = scenario.data.num_clients
    if kind == "inline":
        from fedsim.engine.inline_grid import InlineGrid

        grid: NodeGrid = InlineGrid(
            app, num_clients=num_clients, run_config=run_config, cohort=cohort_policy(scenario)
        )
        try:
            yield grid
        finally:
            grid.shutdown()
        return
    from fedsim.engine.ray_runtime import ray_runtime

    # Ray is imported inside: it reads its authentication mode once, when it loads.
    with ray_runtime(engine.ray_address, scenario.source, engine.allow_unauthenticated_cluster):
        import ray

        from fedsim.engine.ray_grid import RayGrid

        grid = RayGrid(
            app,
            num_clients=num_clients,
            num_actors=default_num_actors(scenario, ray.cluster_resources()),
            num_cpus_per_actor=engine.num_cpus_per_client,
            num_gpus_per_actor=engine.num_gpus_per_client,
            start_timeout=max(engine.timeout, ACTOR_START_TIMEOUT_S),
            run_config=run_config,
            cohort=cohort_policy(scenario),
        )
        try:
            yield grid
        finally:
            grid.shutdown()


def run_on_ray(setup: RunSetup, writer: RunWriter, control: RunControl) -> ArrayRecord:
    """The scenario on a pool of Ray actors (``engine.kind = "ray"``)."""
    with started_grid(setup.scenario, setup.app, "ray") as grid:
        nodes = client_nodes(setup.scenario.data.num_clients)
        return run_session(setup, grid, nodes, writer, control)


def run_inline(setup: RunSetup, writer: RunWriter, control: RunControl) -> ArrayRecord:
    """The scenario with every client served in this process (``engine.kind = "inline"``)."""
    with started_grid(setup.scenario, setup.app, "inline") as grid:
        nodes = client_nodes(setup.scenario.data.num_clients)
        return run_session(setup, grid, nodes, writer, control)


def discover_nodes(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Ask every node its partition id (Flower's engine assigns random node ids).

    Flower's simulation registers its nodes while the ServerApp is already
    running, so first wait until all of them are there.
    """
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {num_clients} Flower nodes came up")
        time.sleep(0.05)
    messages = [Message(RecordDict({keys.CONFIG: ConfigRecord()}), node, WHOAMI) for node in nodes]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
        partition = reply.content.metric_records[keys.METRICS][keys.PARTITION_ID]
        assert isinstance(partition, int)
        mapping[partition] = reply.metadata.src_node_id
    return mapping


def flower_simulation_runtime(
    server_app: Any, client_app: ClientApp, num_supernodes: int, client_resources: dict[str, float]
) -> None:
    """Flower's simulation runtime on a ServerApp and a ClientApp, in this process.

    It is the function Flower's own ``flwr-simulation`` process runs for ``flwr run``
    (``flwr.simulation.run_simulation._run_simulation``), given the apps as objects;
    Flower 1.41 deprecates its public wrapper ``run_simulation``, not this runtime.
    Ray is started by Flower (inside :func:`fedsim.engine.ray_runtime.flower_ray_environment`).
    """
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    _run_simulation(
        num_supernodes=num_supernodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_name="ray",
        backend_config={
            "client_resources": dict(client_resources),
            # Never RAY_ADDRESS's cluster by accident; no dashboard.
            "init_args": {"logging_level": "ERROR", "address": "local", "include_dashboard": False},
        },
    )


def run_on_flower(setup: RunSetup, writer: RunWriter, control: RunControl) -> ArrayRecord:
    """The same scenario through Flower's own simulation runtime (for parity checks)."""
    from fedsim.engine.ray_runtime import check_running_ray, flower_ray_environment

    scenario = setup.scenario
    outcome: dict[str, Any] = {}
    with flower_ray_environment(scenario.source):  # before Flower imports ray
        from flwr.serverapp import ServerApp

        pickle_plugins_for_ray()
        app = ServerApp()

        @app.main()
        def main(grid: Grid, context: Context) -> None:
            try:
                mapping = discover_nodes(grid, scenario.data.num_clients, scenario.engine.timeout)
                # Flower starts Ray in another thread: once nodes answered, it is up.
                check_running_ray(scenario.source, scenario.engine.allow_unauthenticated_cluster)
                outcome["arrays"] = run_session(setup, grid, mapping, writer, control)
            except BaseException as error:  # re-raised in the caller's thread
                outcome["error"] = error

        resources = {"num_cpus": scenario.engine.num_cpus_per_client}
        if scenario.engine.num_gpus_per_client:
            resources["num_gpus"] = scenario.engine.num_gpus_per_client
        flower_simulation_runtime(app, setup.app, scenario.data.num_clients, resources)
    if "error" in outcome:
        raise outcome["error"]
    if "arrays" not in outcome:
        raise RuntimeError("Flower's simulation runtime ended without running the scenario")
    arrays: ArrayRecord = outcome["arrays"]
    return arrays


ENGINES: dict[str, Launcher] = {"ray": run_on_ray, "inline": run_inline, "flower": run_on_flower}
