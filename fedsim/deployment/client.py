"""The ClientApp of an exported app: fedsim's ClientApp on a SuperNode.

A SuperNode serves one client, named by its ``--node-config "partition-id=K
num-partitions=N"`` exactly as Flower's simulation engine names its nodes. The
data are not shipped: fedsim's data sets are generated or packaged, so each
SuperNode builds the scenario's partition from the run config's scenario and
seed, the same split the ServerApp and a simulated run of the scenario make, and
keeps it on disk for the next message, since Flower starts a fresh ClientApp
process for every message (``fedsim.data-dir``; by default ``$FLWR_HOME/fedsim-data``,
the SuperNode user's own Flower folder rather than a shared temporary one).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.supercore.utils import get_flwr_home

from fedsim import __version__, keys
from fedsim.client.app import WHOAMI, HookedClientApp
from fedsim.config import Scenario
from fedsim.data.store import ClientDataStore
from fedsim.deployment.run_config import SOURCE, DeploymentOptions, deployment_scenario
from fedsim.errors import FedsimError
from fedsim.results import CLIENT_DATA_DIR
from fedsim.simulation.setup import build_run

NODE_CONFIG_HINT = "flower-supernode --node-config 'partition-id=K num-partitions=N'"


def node_partition(node_config: Mapping[str, Any], num_clients: int | None = None) -> int:
    """The client a SuperNode serves: its ``partition-id``, checked.

    >>> node_partition({"partition-id": 1, "num-partitions": 2}, 2)
    1
    """
    partition = node_config.get(keys.PARTITION_ID)
    count = node_config.get(keys.NUM_PARTITIONS)
    if not isinstance(partition, int) or not isinstance(count, int):
        raise FedsimError(
            f"node_config: expected integer {keys.PARTITION_ID} and {keys.NUM_PARTITIONS} "
            f"({NODE_CONFIG_HINT}), got {dict(node_config)}"
        )
    if num_clients is not None and count != num_clients:
        raise FedsimError(
            f"node_config: {keys.NUM_PARTITIONS}: expected {num_clients} (the scenario's "
            f"data.num_clients), got {count}"
        )
    if not 0 <= partition < count:
        raise FedsimError(
            f"node_config: {keys.PARTITION_ID}: expected 0..{count - 1}, got {partition}"
        )
    return partition


def data_folder(scenario: Scenario, options: DeploymentOptions, partition: int) -> Path:
    """Where this SuperNode keeps the scenario's data: one folder per data split (the
    data table, the seed, the strategy's proxy set) and per partition, so SuperNodes
    sharing a machine never write the same files."""
    split = {
        "data": scenario.raw.get("data"),
        "seed": scenario.seed,
        "strategy": scenario.raw.get("strategy"),
        "fedsim": __version__,
    }
    digest = hashlib.sha256(json.dumps(split, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(options.data_dir).expanduser() if options.data_dir else get_flwr_home()
    return root / "fedsim-data" / f"{digest}-p{partition}"


def _stored(folder: Path, num_clients: int) -> ClientDataStore | None:
    try:
        store = ClientDataStore.open(folder / CLIENT_DATA_DIR)
    except (OSError, ValueError, KeyError):
        return None
    return store if store.num_clients == num_clients else None


class DeploymentClientApp(ClientApp):
    """fedsim's ClientApp for the scenario in each message's run config."""

    def __init__(self) -> None:
        super().__init__()
        self._apps: dict[str, ClientApp] = {}
        self._whoami = HookedClientApp(ClientApp(), {})

    def __call__(self, message: Message, context: Context) -> Message:
        if message.metadata.message_type == WHOAMI:
            num_clients = context.run_config.get("data.num_clients")
            node_partition(
                context.node_config, num_clients if isinstance(num_clients, int) else None
            )
            return self._whoami(message, context)
        return self.app_for(context)(message, context)

    def app_for(self, context: Context) -> ClientApp:
        """fedsim's ClientApp for this node and run config, its data built if missing."""
        key = json.dumps([context.run_config, dict(context.node_config)], sort_keys=True)
        if key not in self._apps:
            scenario, options = deployment_scenario(context.run_config)
            if scenario.data.dataset is None:
                raise FedsimError(
                    f"{SOURCE}: data.dataset: expected a dataset (an exported app runs "
                    "fedsim's ClientApp)"
                )
            partition = node_partition(context.node_config, scenario.data.num_clients)
            folder = data_folder(scenario, options, partition)
            store = _stored(folder, scenario.data.num_clients)
            setup = build_run(scenario, folder, data=None if store is None else (store, None))
            self._apps[key] = setup.app
        return self._apps[key]
