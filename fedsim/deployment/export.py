"""``fedsim export``: a scenario written out as a Flower app project.

The project imports fedsim (an installed dependency on the SuperLink and every
SuperNode) and copies none of its code: two small modules name the ServerApp
(:mod:`fedsim.deployment.server`) and the ClientApp
(:mod:`fedsim.deployment.client`); ``pyproject.toml`` holds the components and, as
the run config, the resolved scenario (:mod:`fedsim.deployment.run_config`), so
``flwr run DIR ... --run-config "rounds=5"`` changes it as ``fedsim run --set``
would. Flower 1.41 reads SuperLink connections from ``$FLWR_HOME/config.toml``,
not from the project, so ``flower-config.toml`` holds the two connections the
project is meant for (Flower's local simulation runtime, and a SuperLink started
on this machine) for that file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import tomli_w
from flwr.common.config import flatten_dict

from fedsim.config import Scenario
from fedsim.deployment.run_config import (
    DeploymentOptions,
    deployment_scenario,
    to_run_config,
)
from fedsim.errors import FedsimError, ScenarioError
from fedsim.simulation.setup import validate

PACKAGE = "fedsim_app"
SERVER_MODULE = "server_app"
CLIENT_MODULE = "client_app"
CONNECTIONS_FILE = "flower-config.toml"
SIMULATION_CONNECTION = "local"  # Flower's default connection name for its local runtime
DEPLOYMENT_CONNECTION = "local-deployment"
DEFAULT_SUPERLINK = "127.0.0.1:9093"
FLOWER_REQUIREMENT = "flwr[simulation]>=1.41,<1.42"
MAX_NAME_LENGTH = 40

SERVER_APP = '''"""ServerApp of the exported fedsim scenario {name!r}: fedsim's session on
Flower's grid."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.deployment.server import run_on_grid

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Build the scenario's strategy and initial model and run its rounds on ``grid``."""
    run_on_grid(grid, context)
'''

CLIENT_APP = '''"""ClientApp of the exported fedsim scenario {name!r}: fedsim's ClientApp,
serving the partition named by the SuperNode's node_config ("partition-id", "num-partitions")."""

from fedsim.deployment.client import DeploymentClientApp

app = DeploymentClientApp()
'''

README = """# {project}

A Flower app exported by `fedsim export` from the scenario `{source}`.
fedsim must be installed wherever the app runs (the SuperLink and every SuperNode).

Flower's simulation runtime ({num_clients} virtual SuperNodes):

    flwr run . {sim} --federation-config "num-supernodes={num_clients}" --stream

A SuperLink and {num_clients} SuperNodes on this machine (each in its own terminal):

    flower-superlink --insecure --port 9093 --disable-runtime-dependency-installation
{supernodes}
    flwr run . {deploy} --stream

The connections `{sim}` and `{deploy}` are in `{connections}`: add its tables to
`$FLWR_HOME/config.toml` (default `~/.flwr/config.toml`). Change the scenario with
`--run-config`, e.g. `--run-config "rounds=5 client.lr=0.05"`; `fedsim.out` names the
run directory the ServerApp writes (relative to the SuperLink's folder), which
`fedsim report` reads. See fedsim's docs/flower-deployment.md.
"""


def project_name(scenario_name: str) -> str:
    """A Flower app name (a letter, then letters, digits, hyphens) for a scenario.

    >>> project_name("fedau_bernoulli"), project_name("2-clients")
    ('fedau-bernoulli', 'fedsim-2-clients')
    """
    name = re.sub(r"[^A-Za-z0-9-]+", "-", scenario_name).strip("-") or "fedsim-app"
    if not name[0].isalpha():
        name = f"fedsim-{name}"
    return name[:MAX_NAME_LENGTH].rstrip("-")


def connections(superlink: str) -> dict[str, Any]:
    """The SuperLink connections of ``$FLWR_HOME/config.toml`` for an exported app."""
    return {
        "superlink": {
            "default": SIMULATION_CONNECTION,
            SIMULATION_CONNECTION: {"address": ":local:"},
            DEPLOYMENT_CONNECTION: {"address": superlink, "insecure": True},
        }
    }


def _check_directory(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise FedsimError(f"{directory}: exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()):
        raise FedsimError(f"{directory}: exists and is not empty (export into a new folder)")


def _exportable(scenario: Scenario) -> None:
    """What an exported app cannot carry, refused before anything is written."""
    if scenario.client.app is not None:
        raise ScenarioError(
            scenario.source,
            "client.app",
            "no ClientApp of your own (an exported app runs fedsim's ClientApp; "
            "a Flower app of your own runs with flwr run as it is)",
            got=scenario.client.app,
        )
    if scenario.system is not None:
        raise ScenarioError(
            scenario.source,
            "system",
            "no [system] table (a deployment runs on real time, not on simulated time)",
        )


def export_scenario(
    scenario_file: Path,
    directory: Path,
    overrides: list[str] | None = None,
    *,
    superlink: str = DEFAULT_SUPERLINK,
) -> Path:
    """Write the Flower app project for ``scenario_file`` into ``directory`` (new or
    empty); returns ``directory``. Mistakes raise a one-line FedsimError."""
    _check_directory(directory)
    scenario = Scenario.from_file(scenario_file, overrides or [])
    _exportable(scenario)
    validate(scenario)
    options = DeploymentOptions(base_dir=str(Path(scenario.base_dir).resolve()))
    run_config = to_run_config(scenario.raw, options)
    try:
        deployment_scenario(flatten_dict(run_config))  # what the app will read back
    except FedsimError as error:
        raise FedsimError(f"{scenario_file}: cannot be exported: {error}") from error
    project = project_name(scenario.name)
    pyproject = {
        "project": {
            "name": project,
            "version": "1.0.0",
            "description": f"fedsim scenario {scenario.name} as a Flower app (fedsim export)",
            "dependencies": [FLOWER_REQUIREMENT],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedsim",
                    "components": {
                        "serverapp": f"{PACKAGE}.{SERVER_MODULE}:app",
                        "clientapp": f"{PACKAGE}.{CLIENT_MODULE}:app",
                    },
                    "config": run_config,
                }
            }
        },
    }
    header = (
        f"# Exported by `fedsim export {scenario_file}`; fedsim itself must be installed\n"
        "# where the app runs (it is not on PyPI, so it is not a declared dependency).\n"
        "# [tool.flwr.app.config] is the scenario (--run-config changes any key of it)\n"
        "# plus fedsim.* deployment settings (docs/flower-deployment.md).\n\n"
    )
    n = scenario.data.num_clients
    supernodes = "\n".join(
        f"    flower-supernode --insecure --superlink 127.0.0.1:9093 --port {9094 + k} "
        f"--node-config 'partition-id={k} num-partitions={n}'"
        for k in range(min(n, 3))
    )
    if n > 3:
        supernodes += f"\n    ... one per partition-id up to {n - 1}"
    files = {
        "pyproject.toml": header + tomli_w.dumps(pyproject),
        f"{PACKAGE}/__init__.py": '"""A fedsim scenario as a Flower app."""\n',
        f"{PACKAGE}/{SERVER_MODULE}.py": SERVER_APP.format(name=scenario.name),
        f"{PACKAGE}/{CLIENT_MODULE}.py": CLIENT_APP.format(name=scenario.name),
        CONNECTIONS_FILE: tomli_w.dumps(connections(superlink)),
        "README.md": README.format(
            project=project,
            source=scenario_file,
            num_clients=n,
            sim=SIMULATION_CONNECTION,
            deploy=DEPLOYMENT_CONNECTION,
            connections=CONNECTIONS_FILE,
            supernodes=supernodes,
        ),
    }
    try:
        for name, text in files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    except OSError as error:
        raise FedsimError(f"{error.filename}: cannot write ({error.strerror})") from error
    return directory
