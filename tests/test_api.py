"""The public API (docs/api.md): scenarios from files and dicts, objects as building
blocks on both engines, errors with the CLI's messages, trackers' files read back,
the Python scenario script, and the docs page's examples run as doctests."""

from __future__ import annotations

import doctest
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from flwr.serverapp.strategy import FedAvg

import fedsim
from fedsim.analysis import load_run
from fedsim.trackers import read_tensorboard_scalars
from tests.helpers import run_cli, tiny

ROOT = Path(__file__).parent.parent


def same_model(a: Path, b: Path) -> None:
    left, right = np.load(a / "final_model.npz"), np.load(b / "final_model.npz")
    assert left.files == right.files
    for name in left.files:
        np.testing.assert_array_equal(left[name], right[name])


def test_import_is_light() -> None:
    code = "import sys, fedsim; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_file_and_dict_give_the_same_run(tmp_path: Path) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(tiny()))
    from_file = fedsim.run(fedsim.Scenario.from_file(path), out=tmp_path / "file")
    from_dict = fedsim.run(fedsim.Scenario.from_dict(tiny()), out=tmp_path / "dict")
    from_path = fedsim.run(path, out=tmp_path / "path", overrides={"client.lr": 0.1})
    assert isinstance(from_file, fedsim.Run) and from_file.summary is not None
    assert from_file.config == from_dict.config
    for run in (from_dict, from_path):
        same_model(from_file.path, run.path)
        assert run.central().tolist() == from_file.central().tolist()
    assert load_run(from_file.path).metrics.equals(from_file.metrics)
    changed = fedsim.Scenario.from_file(path, ["client.lr=0.3"]).with_overrides({"rounds": 1})
    assert (changed.client.lr, changed.rounds) == (0.3, 1)


def odd_even(round: int, clients: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return clients[clients % 2 == round % 2]


@pytest.mark.parametrize("engine", ["inline", pytest.param("ray", marks=pytest.mark.slow)])
def test_objects_run_end_to_end(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    if engine == "ray":
        request.getfixturevalue("ray_session")
    raw = tiny()
    raw["engine"] = {"kind": engine, **({"num_actors": 2} if engine == "ray" else {})}
    scenario = fedsim.Scenario.from_dict(raw, strategy=FedAvg, participation=odd_even)
    run = fedsim.run(scenario, out=tmp_path / "objects")
    assert run.participation.groupby("round").client.apply(list).to_dict() == {
        1: [1, 3],
        2: [0, 2],
    }
    # The same strategy by name gives the same model: the class is built the same way.
    by_name = fedsim.run(
        fedsim.Scenario.from_dict({**raw, "strategy": {"name": "flwr:FedAvg"}}),
        out=tmp_path / "by-name",
        participation=odd_even,
    )
    same_model(run.path, by_name.path)
    # An instance is used as is; a model factory object builds the model.
    import torch

    def linear(input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), num_classes)
        )

    raw_factory = {**raw, "model": {}}
    instance = fedsim.run(
        fedsim.Scenario.from_dict(raw_factory, model_factory=linear),
        out=tmp_path / "instance",
        strategy=FedAvg(fraction_train=0.5),
    )
    assert set(np.load(instance.path / "final_model.npz").files) == {"1.weight", "1.bias"}
    assert instance.config["model"]["factory"].startswith("python:")


def test_errors_are_fedsims_with_the_cli_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps({**tiny(), "client": {"lr": -1}}))
    with pytest.raises(fedsim.ScenarioError) as raised:
        fedsim.run(path, out=tmp_path / "run")
    cli = run_cli("run", str(path), "--out", str(tmp_path / "cli"), cwd=tmp_path)
    assert cli.returncode == 2
    assert cli.stderr.strip() == f"error: {raised.value}"
    assert not (tmp_path / "run").exists()
    # A run's scenario.toml that names objects needs them again.
    scenario = fedsim.Scenario.from_dict(tiny(), strategy=FedAvg)
    with pytest.raises(fedsim.ScenarioError, match=r"strategy\.name: expected the Python object"):
        fedsim.Scenario.from_dict(scenario.to_dict())
    with pytest.raises(fedsim.ScenarioError, match="no \\[strategy\\] options"):
        fedsim.run(
            fedsim.Scenario.from_dict({**tiny(), "strategy": {"name": "fedavg", "x": 1}}),
            out=tmp_path / "instance",
            strategy=FedAvg(),
        )


def test_trackers_write_files_their_readers_read(tmp_path: Path) -> None:
    raw = {**tiny(), "log": {"trackers": ["jsonl", "tensorboard"]}}
    raw["evaluate"] = {"federated": True}
    raw["data"] = {**raw["data"], "client_test_fraction": 0.25}
    run = fedsim.run(fedsim.Scenario.from_dict(raw), out=tmp_path / "run")
    logs = run.path / "logs"
    import json

    lines = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2]
    central = run.central("accuracy")
    assert [line["metrics"]["central/accuracy"] for line in lines] == central.tolist()
    assert "clients/evaluate/eval_accuracy/mean" in lines[1]["metrics"]
    assert json.loads((logs / "params.json").read_text())["client.lr"] == 0.1
    assert json.loads((logs / "summary.json").read_text())["rounds"] == 2

    scalars = read_tensorboard_scalars(logs / "tensorboard")
    accuracy = [(step, value) for step, tag, value in scalars if tag == "central/accuracy"]
    assert [step for step, _ in accuracy] == [0, 1, 2]
    np.testing.assert_allclose([v for _, v in accuracy], central.to_numpy(), rtol=1e-6)
    evaluate = run.metrics[(run.metrics.phase == "evaluate") & (run.metrics["round"] == 2)]
    mean = evaluate[evaluate.metric == "eval_accuracy"]["value"].mean()
    tb_mean = [v for s, t, v in scalars if t == "clients/evaluate/eval_accuracy/mean" and s == 2]
    np.testing.assert_allclose(tb_mean, [mean], rtol=1e-6)

    # TensorBoard's own reader (a test dependency) reads the same scalars.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logs / "tensorboard"))
    accumulator.Reload()
    events = accumulator.Scalars("central/accuracy")
    assert [e.step for e in events] == [0, 1, 2]
    np.testing.assert_allclose([e.value for e in events], central.to_numpy(), rtol=1e-6)


def test_cli_log_flag(tmp_path: Path) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps({**tiny(), "rounds": 1}))
    result = run_cli("run", str(path), "--out", "r", "--log", "jsonl", "--verbose", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r" / "logs" / "metrics.jsonl").is_file()
    assert fedsim.load_run(tmp_path / "r").config["log"] == {"trackers": ["jsonl"]}
    # --verbose lets Flower's INFO lines through (they are off by default)
    assert "aggregate_train: Received" in result.stdout + result.stderr


def test_lr_search_script_stops_early(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("lr_search", ROOT / "scenarios" / "lr_search.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tried = module.search([0.05, 0.1, 0.2], rounds=2, target=0.0, out=tmp_path, clients=4)
    assert list(tried) == [0.05]  # the first reaches a target of 0: the search stops
    assert (tmp_path / "lr=0.05" / "summary.json").is_file()
    assert not (tmp_path / "lr=0.1").exists()


def test_docs_api_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = doctest.testfile(
        str(ROOT / "docs" / "api.md"),
        module_relative=False,
        globs={"tmp": tmp_path},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.failed == 0 and result.attempted > 10


def test_a_client_app_object_runs_as_the_same_app_by_path(tmp_path: Path) -> None:
    """A ClientApp passed as an object trains exactly as the same app named by path."""
    from fedsim.plugins import load_object

    fixture = ROOT / "tests" / "fixtures" / "user_client_app.py"
    raw = {
        "name": "user-app",
        "rounds": 2,
        "data": {"num_clients": 4},
        "model": {"factory": f"{fixture}:make_model"},
        "client": {"app": f"{fixture}:app", "config": {"shift": 10.0}},
        "strategy": {"name": "fedavg", "uniform_weights": True},
        "engine": {"kind": "inline"},
    }
    by_path = fedsim.run(fedsim.Scenario.from_dict(raw), out=tmp_path / "path")
    app = load_object(f"{fixture}:app", base_dir=ROOT, source="test", key="client.app")
    client = {k: v for k, v in raw["client"].items() if k != "app"}
    as_object = fedsim.run(
        fedsim.Scenario.from_dict({**raw, "client": client}, client_app=app),
        out=tmp_path / "object",
    )
    same_model(by_path.path, as_object.path)
    assert as_object.config["client"]["app"].startswith("python:")


def test_an_interrupted_run_with_objects_resumes_with_them(tmp_path: Path) -> None:
    """A run stopped after round 2 of 3 and resumed with the same objects ends exactly
    as the uninterrupted run."""
    import threading

    from fedsim.simulation.checkpoint import RunInterrupted

    raw = {**tiny(), "rounds": 3, "checkpoint": {"every": 1}}
    whole = fedsim.run(
        fedsim.Scenario.from_dict(raw),
        out=tmp_path / "whole",
        strategy=FedAvg,
        participation=odd_even,
    )
    stop = threading.Event()

    def stop_after_two(rnd: int, _accuracy: float | None) -> None:
        if rnd == 1:  # seen at the end of round 2: a stop ends the run after its round
            stop.set()

    with pytest.raises(RunInterrupted):
        fedsim.run(
            fedsim.Scenario.from_dict(raw),
            out=tmp_path / "parts",
            strategy=FedAvg,
            participation=odd_even,
            on_round_end=stop_after_two,
            stop=stop,
        )
    resumed = fedsim.resume(tmp_path / "parts", strategy=FedAvg, participation=odd_even)
    same_model(whole.path, resumed.path)
    assert resumed.central().tolist() == whole.central().tolist()


def test_flowers_info_lines_are_out_unless_verbose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    flower = logging.getLogger("flwr")
    monkeypatch.setattr(flower, "filters", [])  # as in a fresh notebook
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    flower.addHandler(handler)
    try:
        scenario = fedsim.Scenario.from_dict(tiny()).with_overrides({"rounds": 2})
        fedsim.run(scenario, out=tmp_path / "quiet")
        quiet, seen[:] = list(seen), []
        fedsim.run(scenario, out=tmp_path / "verbose", verbose=True)
    finally:
        flower.removeHandler(handler)
    assert not [line for line in quiet if "aggregate_train" in line]
    assert len([line for line in seen if line.startswith("aggregate_train: Received")]) == 2
    assert flower.filters == []  # the notebook's logging as it was
