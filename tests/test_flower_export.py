"""`fedsim export`: a scenario as a Flower app project, run on Flower's grid.

Fast tests check the project Flower reads (components that import, the run config
holding the scenario, a FAB that builds), the ServerApp and ClientApp on fedsim's
in-process grid (the same final model as a simulated run), and every refusal's one
line. Two slow tests run the exported app with Flower's own processes on
127.0.0.1: a SuperLink with two SuperNodes (a deployment), and a SuperLink in
simulation mode (Flower's simulation runtime).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict
from flwr.cli.build import build_fab_from_disk
from flwr.cli.config_utils import load_and_validate
from flwr.common.config import flatten_dict
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app as cli
from fedsim.config import Scenario
from fedsim.deployment.client import DeploymentClientApp, node_partition
from fedsim.deployment.export import CONNECTIONS_FILE, DEPLOYMENT_CONNECTION, export_scenario
from fedsim.deployment.run_config import DeploymentOptions, from_run_config, to_run_config
from fedsim.deployment.server import run_on_grid
from fedsim.engine.inline_grid import InlineGrid
from fedsim.errors import FedsimError
from fedsim.simulation.entry import run_scenario
from tests.helpers import write_scenario

BIN = Path(sys.executable).parent
SOURCE_ROOT = Path(fedsim.__file__).resolve().parents[1]


def fedau_scenario(**changes: Any) -> dict[str, Any]:
    """FedAU on digits, 2 clients, 2 rounds, a small MLP: seconds on a CPU."""
    scenario: dict[str, Any] = {
        "name": "tiny-fedau",
        "seed": 3,
        "rounds": 2,
        "data": {"dataset": "digits", "num_clients": 2},
        "model": {"name": "mlp", "hidden": [16]},
        "client": {"local_steps": 5, "batch_size": 16, "lr": 0.5},
        "participation": {"pattern": "bernoulli", "p_mean": 0.5, "p_min": 0.3},
        "strategy": {"name": "fedau"},
    }
    for table, values in changes.items():
        if isinstance(values, dict) and table != "participation":
            scenario.setdefault(table, {}).update(values)
        else:
            scenario[table] = values
    return scenario


def simulated_model(tmp_path: Path, scenario: dict[str, Any]) -> dict[str, np.ndarray]:
    """The final model of the same scenario on fedsim's inline engine, every client
    reachable in every round (a deployment's participation: every connected node)."""
    reference = Scenario.from_dict(
        {**scenario, "participation": {"pattern": "always"}},
        base_dir=tmp_path,
    ).with_overrides({"engine.kind": "inline", "engine.cohort": "off"})
    run_scenario(reference, tmp_path / "simulated")
    return dict(np.load(tmp_path / "simulated" / "final_model.npz"))


def assert_models_equal(run_dir: Path, expected: dict[str, np.ndarray]) -> None:
    final = np.load(run_dir / "final_model.npz")
    assert sorted(final.files) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(final[name], value, err_msg=name)


def export(tmp_path: Path, scenario: dict[str, Any], **kwargs: Any) -> Path:
    path = write_scenario(tmp_path, scenario, "scenario.toml")
    return export_scenario(path, tmp_path / "app", **kwargs)


# --- the project ---------------------------------------------------------------------


def test_the_run_config_holds_the_scenario_and_reads_back() -> None:
    """Nested tables flatten to dotted keys (Flower's run config), lists travel as TOML
    text, the [sweep] table is left out, the fedsim.* keys are the deployment's."""
    raw = fedau_scenario(sweep={"seeds": [1, 2]}, client={"config": {"tag": "x"}})
    flat = flatten_dict(to_run_config(raw, DeploymentOptions(out="runs/a")))
    assert flat["model.hidden"] == "[16]"
    assert flat["client.config.tag"] == "x"
    assert flat["fedsim.out"] == "runs/a"
    assert not any(key.startswith("sweep") for key in flat)
    back, options = from_run_config(flat, "app")
    assert back == {k: v for k, v in raw.items() if k != "sweep"}
    assert options == DeploymentOptions(out="runs/a")


def test_export_writes_a_project_flower_reads(tmp_path: Path) -> None:
    directory = export(tmp_path, fedau_scenario())
    sys.path.insert(0, str(directory))  # Flower imports the components from the app's folder
    try:
        config, _ = load_and_validate(directory / "pyproject.toml", check_module=True)
    finally:
        sys.path.remove(str(directory))
        for module in [m for m in sys.modules if m.startswith("fedsim_app")]:
            del sys.modules[module]
    app = config["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "fedsim_app.server_app:app",
        "clientapp": "fedsim_app.client_app:app",
    }
    assert app["config"]["rounds"] == 2 and app["config"]["strategy"]["name"] == "fedau"
    assert app["config"]["fedsim"]["base-dir"] == str(tmp_path.resolve())
    assert build_fab_from_disk(directory)[:2] == b"PK"  # a FAB is a zip
    flower = tomllib.loads((directory / CONNECTIONS_FILE).read_text())["superlink"]
    assert flower["local"] == {"address": ":local:"}
    assert flower[DEPLOYMENT_CONNECTION] == {"address": "127.0.0.1:9093", "insecure": True}


def test_exported_apps_on_fedsims_grid_train_the_simulated_model(tmp_path: Path) -> None:
    """The exported ServerApp and ClientApp, served by fedsim's in-process grid (node ids
    discovered, data built per node from the seed), end at the simulator's final model."""
    scenario = fedau_scenario()
    directory = export(tmp_path, scenario)
    pyproject = tomllib.loads((directory / "pyproject.toml").read_text())
    run_config = flatten_dict(pyproject["tool"]["flwr"]["app"]["config"])
    run_config["fedsim.out"] = str(tmp_path / "run")
    run_config["fedsim.data-dir"] = str(tmp_path / "node-data")
    grid = InlineGrid(DeploymentClientApp(), num_clients=2, run_config=run_config)
    context = Context(
        run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config
    )
    run_dir = run_on_grid(grid, context)
    assert fedsim.load_run(run_dir).summary["rounds"] == 2
    facts = pd.read_parquet(run_dir / "clients.parquet")
    assert facts["participation_probability"].isna().all()  # a deployment knows no p_n
    assert sorted(p.name for p in (tmp_path / "node-data" / "fedsim-data").iterdir())[0].endswith(
        "-p0"
    )
    expected = simulated_model(tmp_path, scenario)
    reference = fedsim.load_run(tmp_path / "simulated")
    assert reference.summary["final_accuracy"] > 0.15  # it learned: the comparison means something
    assert_models_equal(run_dir, expected)


# --- refusals --------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def assert_one_line(result: Any, *parts: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for part in parts:
        assert part in lines[0], lines[0]


def test_export_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    good = write_scenario(tmp_path, fedau_scenario(), "good.toml")
    assert_one_line(invoke("export", str(tmp_path / "none.toml"), str(tmp_path / "a")), "none.toml")
    bad = write_scenario(tmp_path, fedau_scenario(client={"lr": -1.0}), "bad.toml")
    assert_one_line(invoke("export", str(bad), str(tmp_path / "b")), "bad.toml", "client.lr")
    timed = write_scenario(tmp_path, fedau_scenario(system={"devices": "uniform"}), "timed.toml")
    assert_one_line(invoke("export", str(timed), str(tmp_path / "c")), "timed.toml", "system")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert_one_line(invoke("export", str(good), str(full)), "full", "not empty")
    assert (full / "keep.txt").read_text() == "mine" and len(list(full.iterdir())) == 1
    assert not any((tmp_path / name).exists() for name in ("a", "b", "c"))
    written = invoke("export", str(good), str(tmp_path / "ok"), "--set", "rounds=3")
    assert written.exit_code == 0, written.output
    assert "rounds = 3" in (tmp_path / "ok" / "pyproject.toml").read_text()


def deployment_context(tmp_path: Path, scenario: dict[str, Any], **options: Any) -> Context:
    flat = flatten_dict(to_run_config(scenario, DeploymentOptions(**options)))
    flat["fedsim.out"] = str(tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}")
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=flat)


def test_the_server_app_refuses_what_a_deployment_lacks(tmp_path: Path) -> None:
    """The oracle's participation probabilities, SuperNodes for every client: one line
    each, naming the run-config key; nothing is trained."""
    oracle = fedau_scenario(strategy={"name": "fedavg", "rule": "known-probability"})
    context = deployment_context(tmp_path, oracle)
    grid = InlineGrid(DeploymentClientApp(), num_clients=2, run_config=context.run_config)
    with pytest.raises(FedsimError, match="participation_probabilities") as refused:
        run_on_grid(grid, context)
    assert "strategy.name" in str(refused.value) and "\n" not in str(refused.value)
    # Emulating the scenario's pattern gives the oracle its rates: the same grid then runs.
    context = deployment_context(tmp_path, oracle, participation="scenario")
    context.run_config["fedsim.data-dir"] = str(tmp_path / "node-data")
    grid = InlineGrid(DeploymentClientApp(), num_clients=2, run_config=context.run_config)
    assert (run_on_grid(grid, context) / "final_model.npz").is_file()

    three = deployment_context(tmp_path, fedau_scenario(data={"num_clients": 3}), node_timeout=0.2)
    grid = InlineGrid(DeploymentClientApp(), num_clients=2, run_config=three.run_config)
    with pytest.raises(FedsimError, match=r"data\.num_clients: expected 3 SuperNodes") as missing:
        run_on_grid(grid, three)
    assert "fedsim.node-timeout" in str(missing.value) and "\n" not in str(missing.value)

    two = deployment_context(tmp_path, fedau_scenario())
    grid = InlineGrid(DeploymentClientApp(), num_clients=3, run_config=two.run_config)
    with pytest.raises(FedsimError, match=r"num-partitions: expected 2 .* got 3") as counted:
        run_on_grid(grid, two)
    assert "\n" not in str(counted.value)

    timed = deployment_context(tmp_path, fedau_scenario(system={"devices": "uniform"}))
    with pytest.raises(FedsimError, match=r"\[tool.flwr.app.config\]: system"):
        run_on_grid(grid, timed)
    bad = deployment_context(tmp_path, fedau_scenario())
    bad.run_config["fedsim.participation"] = "sometimes"
    with pytest.raises(FedsimError, match=r"fedsim\.participation: expected connected or scenario"):
        run_on_grid(grid, bad)


def test_a_supernode_without_its_partition_is_told_how_to_start() -> None:
    with pytest.raises(FedsimError, match="--node-config 'partition-id=K num-partitions=N'"):
        node_partition({})
    with pytest.raises(FedsimError, match="num-partitions: expected 3"):
        node_partition({"partition-id": 0, "num-partitions": 2}, 3)
    with pytest.raises(FedsimError, match=r"partition-id: expected 0\.\.1, got 2"):
        node_partition({"partition-id": 2, "num-partitions": 2})


# --- Flower's own processes ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Processes:
    """Flower's processes for one test, each in its own process group (its children,
    the ServerApp and ClientApp processes, go with it), all stopped at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.env = {
            **os.environ,
            "FLWR_HOME": str(tmp_path / "flwr-home"),
            # Flower starts its helpers (flower-superexec, flwr-serverapp) by name.
            "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join(
                [str(SOURCE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
        }

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                cwd=self.tmp_path,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((process, log))
        return process

    def flwr(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            cwd=self.tmp_path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_for_superlink(self, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process, log = self.started[0]
            if process.poll() is not None:
                raise AssertionError(f"the SuperLink exited:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"no SuperLink on port {port} after {timeout} s")

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.started)

    def stop(self) -> None:
        for process, _ in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in self.started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
            # children left behind in the group (a ServerApp or ClientApp process)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    (tmp_path / "flwr-home").mkdir()
    try:
        yield processes
    finally:
        processes.stop()


def flwr_run(flower: Processes, directory: Path, connection: str, *extra: str) -> Path:
    """``flwr run`` the app on ``connection``; returns the run directory it wrote."""
    run_dir = flower.tmp_path / "run"
    overrides = (
        f'fedsim.out="{run_dir}" fedsim.data-dir="{flower.tmp_path / "node-data"}" '
        "fedsim.node-timeout=60"
    )
    done = flower.flwr(
        "run",
        str(directory),
        connection,
        "--run-config",
        overrides,
        *extra,
        "--stream",
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr + flower.logs()
    assert (run_dir / "summary.json").is_file(), done.stdout + done.stderr + flower.logs()
    return run_dir


def check_run(tmp_path: Path, run_dir: Path, scenario: dict[str, Any]) -> None:
    run = fedsim.load_run(run_dir)
    assert run.summary["rounds"] == 2 and run.summary["engine"] == "flower"
    assert run.central("accuracy").index.tolist() == [0, 1, 2]  # 0: the initial model
    participation = pd.read_parquet(run_dir / "participation.parquet")
    assert sorted(set(participation["round"])) == [1, 2]
    assert_models_equal(run_dir, simulated_model(tmp_path, scenario))


@pytest.mark.slow
def test_an_exported_fedau_app_runs_on_a_superlink_with_two_supernodes(
    tmp_path: Path, flower: Processes
) -> None:
    port = free_port()
    scenario = fedau_scenario()
    directory = export(tmp_path, scenario, superlink=f"127.0.0.1:{port}")
    shutil.copy(directory / CONNECTIONS_FILE, tmp_path / "flwr-home" / "config.toml")
    flower.start(
        "superlink",
        "flower-superlink",
        "--insecure",
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    )
    flower.wait_for_superlink(port)
    for k in range(2):
        flower.start(
            f"supernode-{k}",
            "flower-supernode",
            "--insecure",
            "--superlink",
            f"127.0.0.1:{port}",
            "--port",
            str(free_port()),
            "--max-wait-time",
            "120",
            "--node-config",
            f"partition-id={k} num-partitions=2",
        )
    run_dir = flwr_run(flower, directory, DEPLOYMENT_CONNECTION)
    check_run(tmp_path, run_dir, scenario)


@pytest.mark.slow
def test_an_exported_app_runs_on_flowers_simulation_runtime(
    tmp_path: Path, flower: Processes
) -> None:
    port = free_port()
    scenario = fedau_scenario()
    directory = export(tmp_path, scenario)
    (tmp_path / "flwr-home" / "config.toml").write_text(
        f'[superlink.sim]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    flower.start(
        "superlink",
        "flower-superlink",
        "--insecure",
        "--simulation",
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    )
    flower.wait_for_superlink(port)
    run_dir = flwr_run(flower, directory, "sim", "--federation-config", "num-supernodes=2")
    check_run(tmp_path, run_dir, scenario)
