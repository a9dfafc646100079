"""Plain helpers that several test modules share (fixtures live in tests/conftest.py).

Test modules import from here, never from each other. The groups:

- strategy rounds through real Flower messages (``FixedGrid``, ``reply_from``, ``play``);
- runs of the toy ClientApp in tests/fixtures/faulty_client_app.py, whose "training"
  is 0.5 × model + partition + 1 + earlier calls, so that final models are computed by
  hand (``toy_scenario``, ``run_toy``, ``expected_model``, ``assert_final``, ``failures``);
- whole digits runs through the command line (``digits_scenario``, ``write_scenario``,
  ``run_cli``);
- stopping a run and checking that its resume is identical (``Crash``, ``crash_after``,
  ``start_cli``, ``wait_for_checkpoint``, ``assert_same_results``);
- figures (``assert_png``).

The sweeps written by formula, for the report and the notebooks, are in
tests/helpers_fake_runs.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import tomli_w
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from matplotlib.image import imread

from fedsim.analysis import load_run
from fedsim.config import load_scenario
from fedsim.errors import FedsimError
from fedsim.models import build_model
from fedsim.simulation import run_scenario
from fedsim.simulation.checkpoint import CHECKPOINT_FILE, load_checkpoint
from fedsim.strategies.base import ServerUpdateStrategy

FIXTURES = Path(__file__).parent / "fixtures"


# --- strategy rounds through Flower messages -----------------------------------------


def arrays_of(**named: list[float]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in named.items()})


def reply_from(instruction: Message, arrays: ArrayRecord, num_examples: float) -> Message:
    """The reply a ClientApp at ``instruction``'s destination would send."""
    content = RecordDict(
        {"arrays": arrays, "metrics": MetricRecord({"num-examples": num_examples})}
    )
    return Message(content, reply_to=instruction)


class FixedGrid:
    """Just enough of a Grid for configure_train: a fixed list of node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def play(
    strategy: ServerUpdateStrategy,
    server_round: int,
    x: list[float],
    replies: Mapping[int, list[float]],
    nodes: list[int],
) -> list[float] | None:
    """One round through Flower messages: send x to ``nodes``, the nodes in ``replies`` answer."""
    grid = cast(Grid, FixedGrid(nodes))
    messages = list(strategy.configure_train(server_round, arrays_of(w=x), ConfigRecord(), grid))
    assert set(replies) <= {m.metadata.dst_node_id for m in messages}
    answers = [
        reply_from(m, arrays_of(w=replies[m.metadata.dst_node_id]), 1.0)
        for m in messages
        if m.metadata.dst_node_id in replies
    ]
    arrays, _ = strategy.aggregate_train(server_round, answers)
    return None if arrays is None else arrays["w"].numpy().tolist()


# --- runs of the toy ClientApp (tests/fixtures/faulty_client_app.py) -------------------

FAULTY_APP = FIXTURES / "faulty_client_app.py"


def toy_scenario(
    rounds: int = 3, engine: dict[str, Any] | None = None, num_clients: int = 4, **config: Any
) -> dict:
    return {
        "name": "faulty",
        "seed": 3,
        "rounds": rounds,
        "data": {"num_clients": num_clients},
        "model": {"factory": f"{FAULTY_APP}:make_model"},
        "client": {"app": f"{FAULTY_APP}:app", "config": config},
        "strategy": {"name": "fedavg", "uniform_weights": True},
        "engine": {"num_actors": 2, **(engine or {})},
    }


def run_toy(tmp_path: Path, scenario: dict, name: str = "run") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(tomli_w.dumps(scenario))
    run_dir, _ = run_scenario(load_scenario(path), tmp_path / name)
    return run_dir


def initial_weights(tmp_path: Path) -> dict[str, np.ndarray]:
    model = build_model(
        {"factory": f"{FAULTY_APP}:make_model"},
        input_shape=(1,),
        num_classes=1,
        seed=3,
        source="",
        base_dir=tmp_path,
    )
    return {name: value.numpy() for name, value in model.state_dict().items()}


def expected_model(tmp_path: Path, mean_steps: list[float]) -> dict[str, np.ndarray]:
    """Each round: w ← 0.5 w + mean over the replies of (partition + 1 + earlier calls)."""
    weights = initial_weights(tmp_path)
    for step in mean_steps:
        weights = {k: v * np.float32(0.5) + np.float32(step) for k, v in weights.items()}
    return weights


def assert_final(run_dir: Path, expected: dict[str, np.ndarray]) -> None:
    final = np.load(run_dir / "final_model.npz")
    for name, value in expected.items():
        np.testing.assert_allclose(final[name], value, rtol=1e-6)


def failures(run_dir: Path) -> list[tuple[int, int, str]]:
    events = load_run(run_dir).events
    return [(e["round"], e["client"], e["reason"]) for e in events if e["event"] == "client_failed"]


# --- whole digits runs through the command line ----------------------------------------


def digits_scenario(**changes: dict) -> dict:
    scenario: dict = {
        "name": "e2e",
        "seed": 4,
        "rounds": 4,
        "data": {"dataset": "digits", "num_clients": 6, "partition": "iid"},
        "model": {"name": "mlp", "hidden": [32]},
        "client": {"local_steps": 20, "batch_size": 16, "lr": 0.1},
        "participation": {"pattern": "uniform", "clients_per_round": 3},
        "engine": {"num_actors": 2},
    }
    for table, values in changes.items():
        if table == "participation":  # a pattern's keys belong to that pattern alone
            scenario[table] = dict(values)
        else:
            scenario.setdefault(table, {}).update(values)
    return scenario


def write_scenario(tmp_path: Path, scenario: dict, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(scenario))
    return path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedsim.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


# --- stopping a run, and its resume --------------------------------------------------


class Crash(Exception):
    """Stands in for a process dying after some round."""


def crash_after(round_: int) -> Any:
    def on_round_end(rnd: int, _accuracy: float | None) -> None:
        if rnd == round_:
            raise Crash(f"crashed after round {rnd}")

    return on_round_end


def start_cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job has
    )


def wait_for_checkpoint(run_dir: Path, round_: int, process: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            done = load_checkpoint(run_dir).round
        except FedsimError:
            done = 0
        if done >= round_:
            return done
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of round {round_} within 300 s")


def assert_same_results(resumed: Path, reference: Path) -> None:
    a, b = np.load(resumed / "final_model.npz"), np.load(reference / "final_model.npz")
    assert a.files == b.files
    for name in a.files:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name
    run_a, run_b = load_run(resumed), load_run(reference)

    def untimed(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame.phase != "timing"].reset_index(drop=True)

    pd.testing.assert_frame_equal(untimed(run_a.metrics), untimed(run_b.metrics))
    pd.testing.assert_frame_equal(run_a.participation, run_b.participation)
    assert [e for e in run_a.events if e["event"] != "resumed"] == run_b.events
    assert any(e["event"] == "resumed" for e in run_a.events)
    timing = run_a.metrics[run_a.metrics.phase == "timing"]
    assert sorted(set(timing["round"])) == sorted(set(run_b.metrics["round"]) - {0})
    assert not (resumed / CHECKPOINT_FILE).exists()


# --- figures -------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_width: int = 300, min_height: int = 200) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000, path
    image = imread(path)
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height, (path, image.shape)
    assert image.std() > 0.01, f"{path} is blank"
    return width, height


def tiny(**engine: object) -> dict:
    """A two-round scenario on 4 digits clients, inline: the API's and trackers' tests."""
    return {
        "name": "tiny",
        "seed": 3,
        "rounds": 2,
        "data": {"dataset": "digits", "num_clients": 4},
        "model": {"name": "mlp", "hidden": [16]},
        "client": {"local_steps": 5, "lr": 0.1},
        "participation": {"pattern": "uniform", "clients_per_round": 2},
        "engine": {"kind": "inline", **engine},
    }
