"""Whole runs through the real path: scenario file → Ray actors → Flower messages → files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsim.analysis import load_run, load_runs
from fedsim.cli import app
from fedsim.config import load_scenario
from fedsim.models import build_model
from fedsim.simulation import run_scenario
from tests.helpers import digits_scenario, run_cli, write_scenario

FIXTURES = Path(__file__).parent / "fixtures"


def test_ray_run_trains_and_writes_tables(tmp_path: Path, ray_session: None) -> None:
    path = write_scenario(tmp_path, digits_scenario())
    run_dir, summary = run_scenario(load_scenario(path), tmp_path / "run")
    run = load_run(run_dir)
    assert summary["final_accuracy"] > 0.6  # ten classes: chance is 0.1
    assert list(run.metrics.columns) == ["round", "client", "phase", "metric", "value"]
    central = run.central("accuracy")
    assert list(central.index) == [0, 1, 2, 3, 4] and central.iloc[-1] > central.iloc[0]
    train = run.metrics[(run.metrics.phase == "train") & run.metrics.client.notna()]
    assert set(train.metric) >= {"num-examples", "train_loss"}
    part = run.participation
    assert (part.groupby("round").available.sum() == 3).all()
    assert (part.selected == part.replied).all() and part.replied.all()
    assert run.config["data"]["num_clients"] == 6
    both = load_runs([run_dir, run_dir])
    assert len(both) == 2 * len(run.metrics) and "strategy.name" not in both  # not set: absent
    assert "data.dataset" in both.columns and set(both["data.dataset"]) == {"digits"}


def test_strategy_plugin_by_path_and_flower_strategy_by_name(tmp_path: Path) -> None:
    """On the inline engine: which strategy aggregates does not depend on the engine."""
    plugin = FIXTURES / "plugin_strategy.py"
    base = digits_scenario(participation={"pattern": "always"})
    base["rounds"] = 2
    base["engine"] = {"kind": "inline"}
    finals = {}
    for label, strategy in {
        "fedavg": {"name": "fedavg"},
        "plugin": {"name": f"{plugin}:HalfStepFedAvg"},
        "flower": {"name": "flwr:FedAvg"},
        "fedadam": {"name": "flwr:FedAdam", "eta": 0.01},
    }.items():
        path = write_scenario(tmp_path, {**base, "strategy": strategy}, f"{label}.toml")
        run_dir, _ = run_scenario(load_scenario(path), tmp_path / label)
        finals[label] = np.load(run_dir / "final_model.npz")
    names = list(finals["fedavg"].files)
    # Flower's FedAvg and fedsim's participating rule agree; the plugin's half step does not.
    for name in names:
        np.testing.assert_allclose(finals["flower"][name], finals["fedavg"][name], atol=1e-5)
    assert any(not np.allclose(finals["plugin"][n], finals["fedavg"][n]) for n in names)
    assert any(not np.allclose(finals["fedadam"][n], finals["fedavg"][n]) for n in names)


def test_user_client_app_by_path(tmp_path: Path, ray_session: None) -> None:
    app = FIXTURES / "user_client_app.py"
    scenario = {
        "name": "user-app",
        "rounds": 2,
        "data": {"num_clients": 4},
        "model": {"factory": f"{app}:make_model"},
        "client": {"app": f"{app}:app", "config": {"shift": 10.0}},
        "strategy": {"name": "fedavg", "uniform_weights": True},
    }
    path = write_scenario(tmp_path, scenario)
    run_dir, _ = run_scenario(load_scenario(path), tmp_path / "run")
    run = load_run(run_dir)
    initial = build_model(
        scenario["model"], input_shape=(1,), num_classes=1, seed=0, source="", base_dir=tmp_path
    ).state_dict()
    final = np.load(run_dir / "final_model.npz")
    # Each round adds mean(partition id) + shift = 1.5 + 10 to every weight.
    for name in ("weight", "bias"):
        np.testing.assert_allclose(final[name], initial[name].numpy() + 23.0, rtol=1e-6)
    per_client = run.metrics[run.metrics.client.notna()]
    partitions = per_client[per_client.metric == "num-partitions"]
    assert set(partitions.value) == {4.0} and len(partitions) == 8
    assert "central" not in set(run.metrics.phase)


@pytest.mark.slow
def test_engines_agree_through_the_cli(tmp_path: Path) -> None:
    """fedsim's engine and Flower's run_simulation give the same final model, bit for bit,
    with cohorts off (with them on, the same up to float32 rounding: tests/test_cohort.py)."""
    scenario = digits_scenario(
        participation={"pattern": "uniform", "clients_per_round": 3}, engine={"cohort": "off"}
    )
    scenario["rounds"] = 3
    path = write_scenario(tmp_path, scenario)
    models = {}
    for engine in ("ray", "flower"):
        done = run_cli("run", str(path), "--engine", engine, "--out", engine, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"results: {engine}" in done.stdout
        assert "aggregate_train" not in done.stdout + done.stderr  # Flower's INFO lines off
        models[engine] = np.load(tmp_path / engine / "final_model.npz")
    for name in models["ray"].files:
        np.testing.assert_array_equal(models["ray"][name], models["flower"][name])
    ray_run, flower_run = load_run(tmp_path / "ray"), load_run(tmp_path / "flower")
    columns = ["round", "client", "selected", "replied"]
    assert ray_run.participation[columns].equals(flower_run.participation[columns])


def test_cli_user_errors_are_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first through a ``fedsim run`` process; the others through the CLI's code in
    this process (the same command, without an interpreter start each)."""
    bad = write_scenario(tmp_path, digits_scenario(client={"lr": "fast"}))
    done = run_cli("run", str(bad), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {bad}: client.lr: expected a number, got 'fast'"
    assert "Traceback" not in done.stderr and done.stdout == ""
    monkeypatch.chdir(tmp_path)
    missing = CliRunner().invoke(app, ["run", "nope.toml"])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == "error: nope.toml: (file): expected an existing scenario file"
    assert missing.stdout == ""
    plugin = write_scenario(tmp_path, digits_scenario(strategy={"name": "missing.py:X"}))
    done_in_process = CliRunner().invoke(app, ["run", str(plugin)])
    assert done_in_process.exit_code == 2
    assert "strategy.name: expected an existing file" in done_in_process.stderr
