"""Checkpoints and resume: a run stopped at any round and resumed ends as if never stopped.

"Identical" is checked strictly: the final model bit for bit, the metrics table
without its timing rows, the participation table and the events (a resumed
run adds one "resumed" event). Stops are a crash (an exception after some
round, the process survives), a stop request (what Ctrl-C sets), SIGKILL of the
whole ``fedsim run`` process group, and SIGINT to it; the last test runs one trial of
``python -m benchmarks.kill_resume``, which kills ``fedsim run`` and resumes it through
``fedsim resume``. The helpers that stop runs and compare results are in tests/helpers.py.
"""

from __future__ import annotations

import csv
import os
import pickle
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch
from flwr.app import Context, RecordDict
from flwr.serverapp.strategy import FedAdam

from fedsim.analysis import load_run
from fedsim.config import load_scenario
from fedsim.errors import FedsimError
from fedsim.results import RunWriter
from fedsim.simulation import resume_run, run_scenario
from fedsim.simulation.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    RunInterrupted,
    arrays_from_numpy,
    arrays_to_numpy,
    load_checkpoint,
    restore_rng,
    restore_strategy,
    rng_state,
    save_checkpoint,
    strategy_state,
)
from fedsim.strategies.fedau import FedAU
from tests.helpers import (
    Crash,
    assert_same_results,
    crash_after,
    start_cli,
    wait_for_checkpoint,
)

FIXTURES = Path(__file__).parent / "fixtures"
APP = FIXTURES / "faulty_client_app.py"


# --- the checkpoint file ------------------------------------------------------------


def a_checkpoint(strategy: Any) -> Checkpoint:
    context = Context(
        run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={}
    )
    return Checkpoint(
        round=4,
        arrays={"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([3], np.int64)},
        strategy=strategy_state(strategy),
        contexts={7: context},
        results={"metrics": [(0, None, "central", "loss", 1.5)], "participation": [], "events": []},
        source="/somewhere/s.toml",
        base_dir="/somewhere",
        rng=rng_state(),
    )


def test_checkpoint_round_trip_is_exact_and_atomic(tmp_path: Path) -> None:
    (tmp_path / "scenario.toml").write_text("rounds = 9\n")
    strategy = FedAU(num_clients=3, seed=0)
    strategy.load_state_dict(
        {"node_ids": [5, 9], "last_round": [2, 3], "gap": [1, 0], "count": [2, 1], "total": [3, 1]}
    )
    save_checkpoint(tmp_path, a_checkpoint(strategy))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE, "scenario.toml"]
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 4 and list(loaded.arrays) == ["w", "n"]
    assert loaded.arrays["w"].dtype == np.float32 and loaded.arrays["n"].tolist() == [3]
    assert loaded.contexts[7].node_config == {"partition-id": 0}
    assert loaded.results["metrics"] == [(0, None, "central", "loss", 1.5)]
    fresh = FedAU(num_clients=3, seed=0)
    restore_strategy(fresh, loaded.strategy)
    assert fresh.state_dict() == strategy.state_dict()


def test_flower_strategy_without_state_dict_keeps_its_attributes() -> None:
    strategy = FedAdam(eta=0.1)
    strategy.m_t = {"w": np.array([0.25, -1.0])}
    strategy.v_t = {"w": np.array([4.0, 2.0])}
    state = strategy_state(strategy)
    fresh = FedAdam(eta=0.1)
    restore_strategy(fresh, state)
    assert state.kind == "attributes"
    assert vars(fresh)["m_t"]["w"].tolist() == [0.25, -1.0]
    assert vars(fresh)["v_t"]["w"].tolist() == [4.0, 2.0]


def test_arrays_survive_bit_for_bit() -> None:
    values: dict[str, np.ndarray] = {
        "a": np.array([np.pi, -0.0, 1e-45], np.float32),
        "b": np.array([[2**60]], np.int64),
    }
    back = arrays_to_numpy(arrays_from_numpy(values))
    assert list(back) == ["a", "b"]
    for name, value in values.items():
        assert back[name].dtype == value.dtype and back[name].tobytes() == value.tobytes()


def test_rng_states_come_back() -> None:
    state = rng_state()
    drawn = (random.random(), np.random.random(), torch.rand(1).item())
    restore_rng(state)
    assert (random.random(), np.random.random(), torch.rand(1).item()) == drawn


def test_load_checkpoint_rejects_foreign_and_future_files(tmp_path: Path) -> None:
    (tmp_path / "scenario.toml").write_text("rounds = 9\n")
    (tmp_path / CHECKPOINT_FILE).write_bytes(pickle.dumps({"round": 3}))
    with pytest.raises(FedsimError, match="not a fedsim checkpoint"):
        load_checkpoint(tmp_path)
    future = a_checkpoint(FedAdam())
    future.version = 99
    save_checkpoint(tmp_path, future)
    with pytest.raises(FedsimError, match="checkpoint format 99, this fedsim reads 2"):
        load_checkpoint(tmp_path)


def test_writer_snapshot_restores_rows(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, {"rounds": 2})
    writer.metric(0, None, "central", "loss", 2.0)
    writer.event(1, "client_failed", client=3, reason="boom")
    snapshot = writer.snapshot()
    writer.metric(1, 2, "train", "loss", 1.0)
    writer.restore(snapshot)
    assert writer.metric_rows == [(0, None, "central", "loss", 2.0)]
    assert writer.events == [{"round": 1, "event": "client_failed", "client": 3, "reason": "boom"}]
    assert writer.last_round() == 0


# --- whole runs ----------------------------------------------------------------------


def toy_scenario(strategy: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The toy ClientApp on the inline engine: what Ray adds to a resume (the Contexts
    of its actors, its processes killed with the run) is what the digits test and the
    SIGINT test on Ray are about."""
    scenario: dict[str, Any] = {
        "name": "resumable",
        "seed": 5,
        "rounds": 5,
        "data": {"num_clients": 5},
        "model": {"factory": f"{APP}:make_model"},
        "client": {"app": f"{APP}:app"},
        "participation": {"pattern": "bernoulli", "rates": 0.6},
        "strategy": strategy,
        "engine": {"kind": "inline"},
        "checkpoint": {"every": 2},
    }
    scenario.update(changes)
    return scenario


def digits_scenario() -> dict[str, Any]:
    return {
        "name": "resumable-digits",
        "seed": 2,
        "rounds": 4,
        "data": {
            "dataset": "digits",
            "num_clients": 5,
            "partition": "dirichlet",
            "alpha": 0.5,
            "client_test_fraction": 0.2,
        },
        "model": {"name": "mlp", "hidden": [16]},
        "client": {"local_steps": 3, "batch_size": 8, "lr": 0.1},
        "participation": {"pattern": "uniform", "clients_per_round": 3, "dropout": 0.2},
        "evaluate": {"federated": True},
        "engine": {"num_actors": 1},
        "checkpoint": {"every": 3},
    }


def write_scenario(tmp_path: Path, scenario: dict[str, Any], name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(tomli_w.dumps(scenario))
    return path


@pytest.mark.slow
def test_crash_then_resume_is_identical_on_digits(tmp_path: Path, ray_session: None) -> None:
    """fedsim's ClientApp (data-stream position in each Context), dropout faults,
    federated evaluation; the crash comes one round after the checkpoint."""
    path = write_scenario(tmp_path, digits_scenario(), "digits")
    reference, _ = run_scenario(load_scenario(path), tmp_path / "reference")
    with pytest.raises(Crash):
        run_scenario(load_scenario(path), tmp_path / "crashed", on_round_end=crash_after(4))
    assert load_checkpoint(tmp_path / "crashed").round == 3
    resumed, summary = resume_run(tmp_path / "crashed")
    assert summary["rounds"] == 4
    assert_same_results(resumed, reference)


STRATEGIES: dict[str, dict[str, Any]] = {
    "fedau": {"name": "fedau"},
    "mifa": {"name": "mifa"},
    "fedadam": {"name": "flwr:FedAdam", "eta": 0.05},
    "gossip": {"name": "gossip", "topology": "ring"},
}


@pytest.mark.parametrize("label", sorted(STRATEGIES))
def test_crash_then_resume_is_identical_for_stateful_strategies(tmp_path: Path, label: str) -> None:
    path = write_scenario(tmp_path, toy_scenario(STRATEGIES[label]), label)
    reference, _ = run_scenario(load_scenario(path), tmp_path / "reference")
    with pytest.raises(Crash):
        run_scenario(load_scenario(path), tmp_path / "crashed", on_round_end=crash_after(3))
    assert load_checkpoint(tmp_path / "crashed").round == 2
    resumed, _ = resume_run(tmp_path / "crashed")
    assert_same_results(resumed, reference)


def test_stop_request_checkpoints_and_resume_finishes(tmp_path: Path) -> None:
    """What Ctrl-C does in the CLI: stop after the round in progress, checkpoint, say how."""
    scenario = toy_scenario({"name": "fedau"}, checkpoint={"every": 0})
    path = write_scenario(tmp_path, scenario, "stop")
    reference, _ = run_scenario(load_scenario(path), tmp_path / "reference")
    stop = threading.Event()

    def on_round_end(rnd: int, _accuracy: float | None) -> None:
        if rnd == 1:
            stop.set()  # as if Ctrl-C came during round 2: round 2 still finishes

    run_dir = tmp_path / "stopped"
    with pytest.raises(RunInterrupted) as caught:
        run_scenario(load_scenario(path), run_dir, on_round_end=on_round_end, stop=stop)
    assert str(caught.value) == (
        f"interrupted after round 2 of 5; results so far in {run_dir}; "
        f"continue with: fedsim resume {run_dir}"
    )
    assert load_checkpoint(run_dir).round == 2
    assert set(load_run(run_dir).participation["round"]) == {1, 2}
    resumed, _ = resume_run(run_dir)
    assert_same_results(resumed, reference)


# --- the real thing: signals to a `fedsim run` process --------------------------------


SLOW_CLIENTS = {"every_sleep_s": 0.15}


def reference_run(tmp_path: Path, scenario: dict[str, Any]) -> Path:
    """The run never stopped, made here without SLOW_CLIENTS' sleep (which changes no
    result, only how long a round takes)."""
    fast = {**scenario, "client": {k: v for k, v in scenario["client"].items() if k != "config"}}
    run_dir, _ = run_scenario(
        load_scenario(write_scenario(tmp_path, fast, "reference")), tmp_path / "reference"
    )
    return run_dir


@pytest.mark.slow
def test_sigkill_at_a_random_round_then_resume_is_identical(tmp_path: Path) -> None:
    """On the inline engine; a SIGKILL that takes Ray's processes with it is the
    benchmarks.kill_resume trial's (the last test)."""
    scenario = toy_scenario({"name": "fedau"}, rounds=8, checkpoint={"every": 1})
    scenario["client"]["config"] = SLOW_CLIENTS
    path = write_scenario(tmp_path, scenario, "killed")
    reference = reference_run(tmp_path, scenario)
    kill_round = random.Random(11).randint(1, 6)
    process = start_cli("run", str(path), "--out", "killed", cwd=tmp_path)
    wait_for_checkpoint(tmp_path / "killed", kill_round, process)
    time.sleep(random.Random(12).uniform(0.0, 0.5))  # somewhere inside the next round
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (tmp_path / "killed" / "summary.json").exists()
    resumed, _ = resume_run(tmp_path / "killed")
    assert_same_results(resumed, reference)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ray", "inline"])
def test_sigint_stops_after_the_round_with_exit_130_and_resumes(
    tmp_path: Path, ray_session: None, kind: str
) -> None:
    scenario = toy_scenario({"name": "mifa"}, rounds=8, checkpoint={"every": 2})
    scenario["engine"] = {"kind": kind, "num_actors": 1}
    scenario["client"]["config"] = SLOW_CLIENTS
    path = write_scenario(tmp_path, scenario, "interrupted")
    reference = reference_run(tmp_path, scenario)
    process = start_cli("run", str(path), "--out", "interrupted", cwd=tmp_path)
    wait_for_checkpoint(tmp_path / "interrupted", 2, process)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    stopped = load_checkpoint(tmp_path / "interrupted").round
    assert 2 <= stopped < 8
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted after round {stopped} of 8; results so far in interrupted; "
        "continue with: fedsim resume interrupted"
    )
    assert "Traceback" not in stderr
    events = load_run(tmp_path / "interrupted").events
    assert not [e for e in events if e["event"] == "client_failed"]  # no actor was hurt
    resumed, _ = resume_run(tmp_path / "interrupted")
    assert_same_results(resumed, reference)


@pytest.mark.slow
def test_a_sigkilled_run_resumes_to_the_reference_results(tmp_path: Path) -> None:
    """One trial of ``python -m benchmarks.kill_resume``: SIGKILL a ``fedsim run`` after a
    checkpoint, ``fedsim resume`` it, and get exactly the uninterrupted run's results."""
    from benchmarks import kill_resume  # the harness that measures this over many trials

    assert kill_resume.main(["--trials", "1", "--out", str(tmp_path)]) == 0
    with (tmp_path / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    row = rows[0]
    assert row["identical"] == "True", row["first_difference"]
    assert (row["kind"], row["run_exit"], row["resume_exit"]) == ("digits", "-9", "0")
    assert 1 <= int(row["kill_round"]) <= int(row["checkpoint_round"]) < int(row["rounds"])
    assert not (tmp_path / "trials" / "000-digits" / "checkpoint.zip").exists()
