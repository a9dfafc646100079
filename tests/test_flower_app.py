"""A Flower app project, written here the way ``flwr new`` lays one out (not by fedsim),
run with ``fedsim run DIR`` on the inline and Ray engines and through Flower's own
simulation runtime: same rounds, the strategy's metrics in fedsim's tables, the same
final model where both train every node. Bad projects are one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedsim
from fedsim.errors import FedsimError
from fedsim.flower_project import read_project
from fedsim.trackers import read_tensorboard_scalars
from tests.helpers import run_cli

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "A Flower app for fedsim's tests"
license = "Apache-2.0"

[tool.flwr.app]
publisher = "tests"

[tool.flwr.app.components]
serverapp = "{package}.server_app:app"
clientapp = "{package}.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3
fraction-train = 1.0
lr = 0.1
model-out = ""

[tool.flwr.federations]
default = "local-simulation"

[tool.flwr.federations.local-simulation]
options.num-supernodes = 3
{extra}"""

TASK = '''\
"""The model and each node's data (seeded by its partition id)."""
import numpy as np
import torch


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


def node_data(partition_id: int, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(100 + partition_id)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * partition_id > 0).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)
'''

CLIENT_APP = '''\
"""The ClientApp: two full-batch SGD steps, and an evaluation, on its own data."""
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from {package}.task import make_model, node_data

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = node_data(int(context.node_config["partition-id"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=float(msg.content["config"]["lr"]))
    for _ in range(2):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    metrics = MetricRecord({{"train_loss": loss.item(), "num-examples": len(x)}})
    content = RecordDict({{"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = node_data(int(context.node_config["partition-id"]))
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    metrics = MetricRecord({{"eval_accuracy": accuracy, "num-examples": len(x)}})
    return Message(content=RecordDict({{"metrics": metrics}}), reply_to=msg)
'''

SERVER_APP = '''\
"""The ServerApp: Flower's own FedAvg, started as every Flower tutorial starts it."""
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from {package}.task import make_model, node_data

app = ServerApp()


def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    model = make_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    x, y = node_data(7, 60)
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    return MetricRecord({{"accuracy": accuracy}})


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    strategy = FedAvg(
        fraction_train=float(config["fraction-train"]),
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(make_model().state_dict()),
        num_rounds=int(config["num-server-rounds"]),
        train_config=ConfigRecord({{"lr": float(config["lr"])}}),
        evaluate_fn=central,
    )
    if config["model-out"]:
        np.savez(str(config["model-out"]), **{{k: v.numpy() for k, v in result.arrays.items()}})
'''


def write_app(root: Path, package: str, extra: str = "") -> Path:
    """A Flower app project in ``root/package`` (a fresh package name per test: the
    modules are imported into the test process)."""
    project = root / package
    (project / package).mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        PYPROJECT.format(name=package.replace("_", "-"), package=package, extra=extra)
    )
    (project / package / "__init__.py").write_text("")
    (project / package / "task.py").write_text(TASK)
    (project / package / "client_app.py").write_text(CLIENT_APP.format(package=package))
    (project / package / "server_app.py").write_text(SERVER_APP.format(package=package))
    return project


def final_model(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as loaded:
        return {name: loaded[name] for name in loaded.files}


def test_flower_project_is_read_as_flwr_run_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = write_app(tmp_path, "readapp")
    read = read_project(project, run_config=["lr=0.5 num-server-rounds=4"])
    assert read.serverapp == "readapp.server_app:app"
    assert read.clientapp == "readapp.client_app:app"
    assert read.num_supernodes == 3  # the default federation's options.num-supernodes
    assert read.run_config == {
        "num-server-rounds": 4,
        "fraction-train": 1.0,
        "lr": 0.5,
        "model-out": "",
    }
    # an int given for a float key is taken as that float, as Flower's TOML values are
    assert read_project(project, run_config=["lr=1"]).run_config["lr"] == 1.0
    overlay = tmp_path / "overlay.toml"
    overlay.write_text("seed = 5\n[data]\nnum_clients = 6\n")
    with_overlay = read_project(project, overlay=overlay)
    assert with_overlay.num_supernodes == 6 and with_overlay.fedsim["seed"] == 5
    # Without federations in the project: Flower 1.41's $FLWR_HOME/config.toml, then 2
    text = (project / "pyproject.toml").read_text()
    (project / "pyproject.toml").write_text(text[: text.index("[tool.flwr.federations]")])
    home = tmp_path / "flwr-home"
    monkeypatch.setenv("FLWR_HOME", str(home))
    assert read_project(project).num_supernodes == 2
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n[superlink.local]\noptions.num-supernodes = 5\n'
    )
    assert read_project(project).num_supernodes == 5


def test_flower_app_runs_inline_with_its_metrics_in_fedsims_tables(tmp_path: Path) -> None:
    project = write_app(tmp_path, "inlineapp")
    saved = tmp_path / "app_model.npz"
    run = fedsim.run_app(
        project,
        out=tmp_path / "run",
        engine="inline",
        run_config=[f'model-out="{saved}"'],
    )
    assert run.summary is not None and run.summary["rounds"] == 3
    metrics = run.metrics
    server = metrics[metrics["client"].isna()]
    # FedAvg's aggregated train and evaluate metrics, every round
    for phase, name in (("train", "train_loss"), ("evaluate", "eval_accuracy")):
        rows = server[(server["phase"] == phase) & (server["metric"] == name)]
        assert sorted(rows["round"]) == [1, 2, 3], (phase, name)
    central = server[(server["phase"] == "central") & (server["metric"] == "accuracy")]
    assert sorted(central["round"]) == [0, 1, 2, 3]
    assert run.summary["final_accuracy"] == central.sort_values("round")["value"].iloc[-1]
    # each node's own train loss, per round
    per_client = metrics[(metrics["phase"] == "train") & (metrics["metric"] == "train_loss")]
    assert len(per_client.dropna(subset=["client"])) == 9
    participation = run.participation
    assert participation.groupby("round")["replied"].sum().tolist() == [3, 3, 3]
    # the Result fedsim handed back to the app holds the final model fedsim recorded
    recorded = final_model(run.path / "final_model.npz")
    from_app = final_model(saved)
    assert recorded.keys() == from_app.keys()
    for name in recorded:
        np.testing.assert_array_equal(recorded[name], from_app[name])
    assert run.config["flower"]["serverapp"] == "inlineapp.server_app:app"
    # fedsim report reads it like any run: the per-client view from the app's own metric
    from fedsim.analysis.report import write_report

    report = write_report(run.path)
    written = {path.name for path in report.figures.values()}
    assert {"accuracy.png", "participation.png", "clients.png"} <= written
    assert report.markdown.is_file()


def test_participation_from_tool_fedsim_limits_each_rounds_nodes(tmp_path: Path) -> None:
    extra = '\n[tool.fedsim]\nseed = 3\n[tool.fedsim.participation]\npattern = "uniform"\n'
    extra += "clients_per_round = 2\n"
    project = write_app(tmp_path, "uniformapp", extra)
    args = ["run", str(project), "--engine", "inline", "--out", "run"]
    done = run_cli(*args, "--log", "jsonl", "--log", "tensorboard", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "aggregate_train" not in done.stdout + done.stderr  # Flower's INFO lines off
    assert done.stdout.splitlines()[-1] == "results: run"
    run = fedsim.load_run(tmp_path / "run")
    assert run.summary is not None and run.summary["rounds"] == 3
    # the trackers got the app's rounds, read back by their own readers
    lines = (run.path / "logs/metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    assert [entry["step"] for entry in logged] == [0, 1, 2, 3]
    assert logged[-1]["metrics"]["central/accuracy"] == run.summary["final_accuracy"]
    scalars = read_tensorboard_scalars(run.path / "logs/tensorboard")
    assert sorted(step for step, tag, _ in scalars if tag == "train/train_loss") == [1, 2, 3]
    participation = run.participation
    per_round = participation.groupby("round")
    assert per_round["available"].sum().tolist() == [2, 2, 2]
    assert per_round["replied"].sum().tolist() == [2, 2, 2]
    available = participation[participation["available"]]
    replied = participation[participation["replied"]]
    assert set(map(tuple, replied[["round", "client"]].values)) <= set(
        map(tuple, available[["round", "client"]].values)
    )
    # the same seed draws the same nodes again
    again = fedsim.run_app(project, out=tmp_path / "again", engine="inline").participation
    pd.testing.assert_frame_equal(participation, again)


def test_a_serverapp_without_strategy_start_runs_and_says_it_has_no_rounds(
    tmp_path: Path,
) -> None:
    project = write_app(tmp_path, "loopapp")
    (project / "loopapp" / "server_app.py").write_text(
        "from flwr.serverapp import Grid, ServerApp\n"
        "app = ServerApp()\n\n\n"
        "@app.main()\n"
        "def main(grid: Grid, context) -> None:\n"
        "    assert sorted(grid.get_node_ids()) and context.run_config['lr'] == 0.1\n"
    )
    run = fedsim.run_app(project, out=tmp_path / "run", engine="inline")
    assert run.summary is not None and run.summary["rounds"] == 0
    assert [e["event"] for e in run.events] == ["no_strategy_start"]
    assert not (run.path / "final_model.npz").exists()


@pytest.mark.slow
def test_flower_app_on_ray_and_on_flowers_runtime_reach_the_same_model(
    tmp_path: Path, ray_session: None
) -> None:
    project = write_app(tmp_path, "rayapp")
    inline = fedsim.run_app(project, out=tmp_path / "inline", engine="inline")
    on_ray = fedsim.run_app(project, out=tmp_path / "ray", engine="ray")
    assert on_ray.summary is not None and on_ray.summary["rounds"] == 3
    expected = final_model(inline.path / "final_model.npz")
    ray_model = final_model(on_ray.path / "final_model.npz")
    for name in expected:  # replies are aggregated in client order on both engines
        np.testing.assert_array_equal(ray_model[name], expected[name])
    # Flower's own simulation runtime on the same app, loaded from its folder as the
    # flwr-simulation process loads it for `flwr run`. It samples every node too, in a
    # random order, so the FedAvg sums may differ in the last bits.
    saved = tmp_path / "flower_model.npz"
    done = subprocess.run(
        [sys.executable, "-c", FLOWER_RUNTIME.format(project=str(project), out=str(saved))],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    flower_model = final_model(saved)
    assert flower_model.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(flower_model[name], expected[name], rtol=1e-5, atol=1e-6)


FLOWER_RUNTIME = """
from flwr.app import Context, RecordDict
from flwr.common.config import get_fused_config_from_dir
from flwr.supercore.telemetry import EventType
from flwr.simulation.run_simulation import _run_simulation

run_config = get_fused_config_from_dir({project!r}, {{"model-out": {out!r}}})
_run_simulation(
    num_supernodes=3,
    exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
    client_app_attr="rayapp.client_app:app",
    server_app_attr="rayapp.server_app:app",
    app_dir={project!r},
    is_app=True,
    server_app_context=Context(
        run_id=1, node_id=0, node_config={{}}, state=RecordDict(), run_config=run_config
    ),
    backend_config={{
        "client_resources": {{"num_cpus": 1}},
        "init_args": {{"num_cpus": 2, "include_dashboard": False, "logging_level": "ERROR"}},
    }},
)
"""


def test_bad_flower_projects_are_one_line_errors(tmp_path: Path) -> None:
    # a folder with a pyproject.toml that is not a Flower app
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1"\n')
    with pytest.raises(FedsimError) as error:
        fedsim.run_app(plain, out=tmp_path / "run")
    assert str(error.value) == (
        f"{plain.resolve()}/pyproject.toml: [tool]: expected Flower's app table (missing); "
        "is this a Flower app project?"
    )
    # a run-config key of the wrong type, and one the app does not have
    project = write_app(tmp_path, "typedapp")
    with pytest.raises(FedsimError) as error:
        fedsim.run_app(project, run_config=['lr="fast"'])
    assert str(error.value) == (
        f"{project.resolve()}/pyproject.toml: tool.flwr.app.config.lr: expected a "
        "float like its default 0.1, got 'fast'"
    )
    with pytest.raises(FedsimError, match=r"tool.flwr.app.config.epochs: expected a key of"):
        fedsim.run_app(project, run_config=["epochs=2"])
    # fedsim settings a Flower app does not take
    overlay = tmp_path / "overlay.toml"
    overlay.write_text('[strategy]\nname = "fedau"\n')
    with pytest.raises(FedsimError) as error:
        fedsim.run_app(project, scenario=overlay)
    assert str(error.value) == (
        f"{overlay}: strategy: not used for a Flower app (its ServerApp decides that); "
        "expected one of name, seed, data, participation, engine, log"
    )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "run").exists()


def test_a_component_that_does_not_import_is_one_line_exit_2(tmp_path: Path) -> None:
    broken = write_app(tmp_path, "brokenapp")
    (broken / "brokenapp" / "client_app.py").write_text("import not_a_module_anywhere\n")
    done = run_cli("run", str(broken), "--engine", "inline", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"error: {broken.resolve()}/pyproject.toml: tool.flwr.app.components.clientapp: "
        f"expected a module:attribute that imports from {broken.resolve()} "
        "(ModuleNotFoundError: No module named 'not_a_module_anywhere'), "
        "got 'brokenapp.client_app:app'"
    )
    assert done.stdout == "" and not (tmp_path / "runs").exists()
