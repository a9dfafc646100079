"""The ServerApp of an exported app: a fedsim session on a real Flower grid.

A deployment lacks what fedsim's engines inject, so :func:`run_on_grid` gets it
here: the number of clients is the scenario's ``data.num_clients`` (from the run
config), checked against the SuperNodes that connect; node ids come from the grid
(every SuperNode is asked its ``partition-id``, as under Flower's simulation
engine); the seed is the scenario's; a FedLAW proxy set is carved from the
server's own copy of the data, built from the same seed. What only a simulator
knows (the participation probabilities an oracle baseline is given) is refused
with one line, unless the scenario's pattern is emulated
(``fedsim.participation = "scenario"``). Everything else is fedsim's own run:
:func:`fedsim.simulation.entry.run_scenario` writes the usual run directory
(metrics, participation, final model, summary) that ``fedsim report`` reads.
"""

from __future__ import annotations

from dataclasses import replace
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsim.deployment.run_config import SOURCE, DeploymentOptions, deployment_scenario
from fedsim.errors import FedsimError, ScenarioError
from fedsim.results import RunWriter
from fedsim.simulation.api import default_run_dir
from fedsim.simulation.entry import run_scenario
from fedsim.simulation.launch import Launcher, discover_nodes
from fedsim.simulation.session import RunControl, run_session
from fedsim.simulation.setup import RunSetup
from fedsim.strategies import declared_parameters


class ConnectedClients:
    """Participation in a deployment: a client is reachable while its SuperNode is
    connected. No long-run rates are known (``probabilities`` is None).

    >>> class TwoNodes:
    ...     def get_node_ids(self): return [11]
    >>> ConnectedClients(TwoNodes(), {0: 10, 1: 11}).reachable(1).tolist()
    [1]
    """

    probabilities = None

    def __init__(self, grid: Grid, node_of_client: dict[int, int]) -> None:
        self.grid = grid
        self.node_of_client = node_of_client

    def reachable(self, round: int) -> np.ndarray:
        connected = set(self.grid.get_node_ids())
        clients = [c for c, node in sorted(self.node_of_client.items()) if node in connected]
        return np.asarray(clients, dtype=np.int64)


def connect_clients(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Client id → node id, once every client's SuperNode has connected and answered."""
    try:
        mapping = discover_nodes(grid, num_clients, timeout)
    except RuntimeError as error:
        raise FedsimError(
            f"{SOURCE}: data.num_clients: expected {num_clients} SuperNodes answering with "
            f"their partition-id 0..{num_clients - 1} within fedsim.node-timeout = "
            f"{timeout:g} s ({str(error).splitlines()[0]})"
        ) from error
    if sorted(mapping) != list(range(num_clients)):
        raise FedsimError(
            f"{SOURCE}: data.num_clients: expected one SuperNode per partition-id "
            f"0..{num_clients - 1}, got partition ids {sorted(mapping)}"
        )
    return mapping


def _check_oracle(setup: RunSetup, mapping: dict[int, int]) -> None:
    """An oracle baseline's participation probabilities exist only in a simulator."""
    if getattr(setup.pattern, "probabilities", None) is not None:
        return
    if "participation_probabilities" not in declared_parameters(setup.strategy.cls)[0]:
        return
    try:
        setup.strategy.build(setup.strategy_inputs(mapping, "cpu"), SOURCE)
    except ScenarioError as error:
        raise FedsimError(
            f"{SOURCE}: strategy.name: {setup.scenario.strategy_name} needs "
            "participation_probabilities, which a deployment does not know (a SuperNode "
            "is reachable while connected); emulate the scenario's pattern with "
            'fedsim.participation = "scenario", or choose a strategy without an oracle'
        ) from error


def on_grid(grid: Grid, options: DeploymentOptions) -> Launcher:
    """A launcher (:data:`fedsim.simulation.launch.Launcher`) for Flower's ``grid``."""

    def launch(setup: RunSetup, writer: RunWriter, control: RunControl) -> ArrayRecord:
        mapping = connect_clients(grid, setup.scenario.data.num_clients, options.node_timeout)
        if options.participation == "connected":
            setup = replace(setup, pattern=ConnectedClients(grid, mapping), faults=None)
            writer.client_facts(setup.client_facts())  # no long-run rates p_n are known
        _check_oracle(setup, mapping)
        return run_session(setup, grid, mapping, writer, control)

    return launch


def run_on_grid(grid: Grid, context: Context) -> Path:
    """Run the scenario in ``context.run_config`` on ``grid``; returns the run directory."""
    scenario, options = deployment_scenario(context.run_config)
    run_dir = Path(options.out) if options.out else default_run_dir(scenario)
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise FedsimError(f"{SOURCE}: fedsim.out: {run_dir} exists and is not empty")

    def progress(rnd: int, accuracy: float | None) -> None:
        shown = "" if accuracy is None else f", central accuracy {accuracy:.3f}"
        log(INFO, "fedsim: round %d/%d done%s", rnd, scenario.rounds, shown)

    run_scenario(scenario, run_dir, on_round_end=progress, launcher=on_grid(grid, options))
    log(INFO, "fedsim: results in %s", run_dir.resolve())
    return run_dir
