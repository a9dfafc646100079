"""The MLflow, W&B and TensorBoard sinks, read back by each tracker's own reader: one
tiny run from the command line with ``--log`` for all three, then MLflow's client on
its store, W&B's ``wandb leet inspect`` on the offline run and TensorBoard's event
reader on the event file, against the run's own parquet tables and report."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w

import fedsim
from fedsim.trackers import MlflowTracker, Trackers
from tests.helpers import Crash, crash_after, tiny

SCENARIO = tiny()
TRACKER_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_PROJECT")


def quiet_env(home: Path) -> dict[str, str]:
    """This process's environment without tracker settings, W&B's folders under ``home``."""
    env = {k: v for k, v in os.environ.items() if k not in TRACKER_ENV}
    env.update(
        WANDB_SILENT="true",
        WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_CACHE_DIR=str(home / "cache"),
        WANDB_DATA_DIR=str(home / "data"),
    )
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> fedsim.Run:
    """One run logged to MLflow, W&B and TensorBoard by ``fedsim run --log ...``."""
    tmp = tmp_path_factory.mktemp("trackers")
    (tmp / "tiny.toml").write_text(tomli_w.dumps(SCENARIO))
    logs = [arg for name in ("mlflow", "wandb", "tensorboard") for arg in ("--log", name)]
    result = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", "tiny.toml", "--out", "r", *logs],
        cwd=tmp,
        env=quiet_env(tmp / "wandb-home"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert not re.search(r"tracker \w+ (not started|stopped)|not sent", result.stderr)
    return fedsim.load_run(tmp / "r")


def client_mean(run: fedsim.Run, rnd: int, phase: str, metric: str) -> float:
    rows = run.metrics[
        (run.metrics["round"] == rnd)
        & (run.metrics.phase == phase)
        & (run.metrics.metric == metric)
        & run.metrics.client.notna()
    ]
    return float(rows["value"].mean())


@pytest.mark.slow
def test_mlflow_client_reads_the_run_back(run: fedsim.Run) -> None:
    import mlflow

    store = run.path / "logs" / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("fedsim")
    assert experiment is not None
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == "tiny" and logged.info.status == "FINISHED"
    assert logged.data.params["client.lr"] == "0.1"
    assert logged.data.params["model.hidden"] == "[16]"

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(logged.info.run_id, key)}

    accuracy = history("central/accuracy")
    assert sorted(accuracy) == [0, 1, 2]
    central = run.central("accuracy")
    np.testing.assert_allclose([accuracy[s] for s in central.index], central.to_numpy())
    loss = history("clients/train/train_loss/mean")
    assert sorted(loss) == [1, 2]
    assert loss[2] == pytest.approx(client_mean(run, 2, "train", "train_loss"))
    assert logged.data.metrics["summary/final_accuracy"] == run.summary["final_accuracy"]

    # The report's figures (and tables) as artifacts, the same files as RUN_DIR/report.
    names = {info.path for info in client.list_artifacts(logged.info.run_id, "report")}
    assert {"report/accuracy.png", "report/participation.png", "report/summary.md"} <= names
    local = client.download_artifacts(logged.info.run_id, "report/accuracy.png", str(run.path))
    assert Path(local).read_bytes() == (run.path / "report" / "accuracy.png").read_bytes()


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of the offline run under ``run_dir``, as W&B's own reader prints them."""
    (offline,) = (run_dir / "logs" / "wandb").glob("offline-run-*")
    result = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline)],
        env=quiet_env(run_dir / "wandb-home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
def test_wandb_offline_run_reads_back(run: fedsim.Run) -> None:
    records = wandb_records(run.path)
    (header,) = [r["run"] for r in records if r["type"] == "run"]
    assert header["display_name"] == "tiny" and header["project"] == "fedsim"
    assert header["config"]["update"]["client.lr"] == 0.1
    assert header["telemetry"]["feature"]["offline"] is True

    history = [r["history"] for r in records if r["type"] == "history"]
    assert [h["step"].get("num", 0) for h in history] == [0, 1, 2]
    np.testing.assert_allclose(
        [h["item"]["central/accuracy"] for h in history], run.central("accuracy").to_numpy()
    )
    assert history[1]["item"]["clients/train/train_loss/mean"] == pytest.approx(
        client_mean(run, 1, "train", "train_loss")
    )
    last = history[-1]["item"]
    assert last["report/accuracy._type"] == "image-file"
    (offline,) = (run.path / "logs" / "wandb").glob("offline-run-*")
    image = offline / "files" / last["report/accuracy.path"]
    assert image.read_bytes() == (run.path / "report" / "accuracy.png").read_bytes()

    summary: dict = {}
    for record in records:
        if record["type"] == "summary":
            summary.update(record["summary"].get("update", {}))
    assert summary["summary/final_accuracy"] == run.summary["final_accuracy"]
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]


@pytest.mark.slow
def test_tensorboard_images_are_the_report_figures(run: fedsim.Run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run.path / "logs" / "tensorboard"))
    accumulator.Reload()
    assert {"report/accuracy", "report/participation"} <= set(accumulator.Tags()["images"])
    (image,) = accumulator.Images("report/accuracy")
    png = (run.path / "report" / "accuracy.png").read_bytes()
    assert image.step == 2 and image.encoded_image_string == png
    assert (image.width, image.height) == struct.unpack(">II", png[16:24])
    steps = [event.step for event in accumulator.Scalars("central/accuracy")]
    assert steps == [0, 1, 2]


def test_mlflow_follows_its_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``MLFLOW_TRACKING_URI`` (a store shared by a sweep's runs, say) wins over the run's
    own store; ``MLFLOW_EXPERIMENT_NAME`` names the experiment. (A plain-file store here:
    it starts in milliseconds where a new SQLite store runs MLflow's migrations.)"""
    import mlflow

    shared = (tmp_path / "shared").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lab")
    for name in ("a", "b"):
        tracker = MlflowTracker(tmp_path / name / "logs", name)
        tracker.start({"seed": 1})
        tracker.log(1, {"central/accuracy": 0.5})
        tracker.finish({"rounds": 1})
    assert not (tmp_path / "a").exists()
    client = mlflow.MlflowClient(tracking_uri=shared)
    experiment = client.get_experiment_by_name("lab")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["a", "b"]
    assert {r.data.metrics["central/accuracy"] for r in runs} == {0.5}


def test_a_missing_tracker_library_is_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    raw = {**SCENARIO, "rounds": 1, "log": {"trackers": "mlflow"}}
    with pytest.warns(RuntimeWarning, match=r"tracker mlflow not started: .*fedsim\[mlflow\]"):
        run = fedsim.run(fedsim.Scenario.from_dict(raw), out=tmp_path / "run")
    assert run.summary is not None


def test_a_report_that_fails_is_one_warning(tmp_path: Path) -> None:
    """The figures come from the finished run's files; without them the trackers still
    get the summary."""
    trackers = Trackers(["tensorboard", "jsonl"], tmp_path / "not-a-run", {"seed": 1})
    with pytest.warns(RuntimeWarning, match="the report's figures not sent: FedsimError"):
        trackers.finish({"rounds": 0, "final_accuracy": 0.5})
    assert set(trackers.active) == {"tensorboard", "jsonl"}
    logs = tmp_path / "not-a-run" / "logs"
    assert json.loads((logs / "summary.json").read_text())["final_accuracy"] == 0.5


@pytest.mark.slow
def test_a_run_that_fails_ends_its_tracker_runs_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    for name, value in quiet_env(tmp_path / "wandb-home").items():
        monkeypatch.setenv(name, value)
    for name in TRACKER_ENV:
        monkeypatch.delenv(name, raising=False)
    store = (tmp_path / "mlruns").as_uri()  # a plain-file store: no migrations to wait for
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    raw = {**SCENARIO, "log": {"trackers": ["mlflow", "wandb"]}}
    with pytest.raises(Crash):
        fedsim.run(
            fedsim.Scenario.from_dict(raw), out=tmp_path / "run", on_round_end=crash_after(1)
        )

    client = mlflow.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("fedsim")
    assert experiment is not None
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.status == "FAILED"
    steps = client.get_metric_history(logged.info.run_id, "central/accuracy")
    assert sorted(m.step for m in steps) == [0, 1]

    records = wandb_records(tmp_path / "run")
    assert [r["history"]["step"].get("num", 0) for r in records if r["type"] == "history"] == [
        0,
        1,
    ]
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [1]
