"""Participation through whole runs: scripted patterns, traces, faults and actors.

What the engine records in ``participation.parquet`` must be exactly what the
pattern and the faults say — whatever the number of Ray actors — and a reply
that was dropped, late or failed must never reach the aggregate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedsim.analysis import load_run, participation_matrix, participation_rates
from fedsim.config import load_scenario
from fedsim.models import build_model
from fedsim.participation import build_faults, build_pattern
from fedsim.participation.matrix import participation_matrix as pattern_matrix
from fedsim.simulation import run_scenario
from fedsim.simulation.setup import client_label_distribution
from tests.helpers import digits_scenario, run_cli, write_scenario

ROUNDS = 3
NUM_CLIENTS = 6
STATES = ["available", "selected", "replied", "failed", "dropped", "late"]


def small(participation: dict, **changes: dict) -> dict:
    scenario = digits_scenario(participation=participation, **changes)
    scenario["rounds"] = ROUNDS
    scenario["client"]["local_steps"] = 5
    return scenario


def pairs(frame: pd.DataFrame, state: str = "available") -> set[tuple[int, int]]:
    rows = frame[frame[state]]
    return set(zip(rows["round"].tolist(), rows["client"].tolist(), strict=True))


def final_model(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "final_model.npz") as arrays:
        return {name: arrays[name] for name in arrays.files}


def assert_same_model(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.slow
def test_trace_and_script_run_end_to_end_through_the_cli(tmp_path: Path) -> None:
    """`fedsim run` replays a trace file and a script exactly (every reachable client trains).

    On the inline engine: who is reachable is decided around the engine (the actors'
    part is the next test's)."""
    (tmp_path / "trace.csv").write_text(
        "round,client,available\n1,0,1\n1,2,1\n1,4,1\n2,1,1\n2,3,1\n2,5,1\n"
        "3,0,1\n3,1,1\n3,2,1\n3,3,1\n3,5,0\n"
    )
    (tmp_path / "every.py").write_text(
        "def every(round, clients, rng, k):\n    return clients[(clients + round) % k == 0]\n"
    )
    expected = {
        "trace": {(1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3)},
        # (client + round) % 3 == 0: round 1 → 2, 5; round 2 → 1, 4; round 3 → 0, 3.
        "script": {(1, 2), (1, 5), (2, 1), (2, 4), (3, 0), (3, 3)},
    }
    patterns: dict[str, dict[str, Any]] = {
        "trace": {"pattern": "trace", "trace": "trace.csv"},
        "script": {"pattern": "script", "script": "every.py:every", "script_args": {"k": 3}},
    }
    for name, participation in patterns.items():
        scenario = small(participation, engine={"kind": "inline", "num_actors": 1})
        path = write_scenario(tmp_path, scenario, f"{name}.toml")
        done = run_cli("run", str(path), "--out", name, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        run = load_run(tmp_path / name)
        part = run.participation
        assert list(part.columns) == ["round", "client", *STATES]
        assert pairs(part) == expected[name]
        for state in ("selected", "replied"):
            assert pairs(part, state) == expected[name]
        assert not part[["failed", "dropped", "late"]].any().any()
        matrix = participation_matrix(run)
        assert matrix.shape == (NUM_CLIENTS, ROUNDS)
        assert {(r, c) for c, r in zip(*np.nonzero(matrix.to_numpy()), strict=True)} == {
            (r - 1, c) for r, c in expected[name]
        }


@pytest.mark.slow
def test_actors_do_not_change_participation_or_model(tmp_path: Path, ray_session: None) -> None:
    """Label-based Bernoulli rates, dropout and a deadline, FedAU: 1 actor vs 2 actors."""
    participation = {
        "pattern": "bernoulli",
        "p_mean": 0.5,
        "p_min": 0.3,
        "dropout": 0.2,
        "latency": {"distribution": "uniform", "params": {"low": 0.0, "high": 2.0}},
        "deadline": 1.5,
    }
    tables, models = {}, {}
    for actors in (1, 2):
        scenario = small(
            participation,
            data={"partition": "dirichlet", "alpha": 0.5},
            strategy={"name": "fedau"},
            engine={"num_actors": actors},
        )
        path = write_scenario(tmp_path, scenario, f"a{actors}.toml")
        run_dir, _ = run_scenario(load_scenario(path), tmp_path / f"a{actors}")
        tables[actors] = load_run(run_dir).participation
        models[actors] = final_model(run_dir)
    assert tables[1].equals(tables[2])
    assert_same_model(models[1], models[2])
    # The run saw exactly what `fedsim participation` draws for this scenario.
    loaded = load_scenario(tmp_path / "a1.toml")
    pattern = build_pattern(
        loaded.participation,
        num_clients=NUM_CLIENTS,
        seed=loaded.seed,
        label_distribution=client_label_distribution(loaded),
        source=loaded.source,
        base_dir=loaded.base_dir,
    )
    drawn = pattern_matrix(pattern, ROUNDS)
    assert drawn.any() and not drawn.all()
    np.testing.assert_array_equal(participation_matrix(load_run(tmp_path / "a1")), drawn)


def test_in_round_faults_are_recorded_and_not_aggregated(tmp_path: Path) -> None:
    """Dropouts and stragglers past the deadline are recorded, and the model is the one
    trained by the clients that replied alone (on the inline engine: the faults are
    simulated around the engine)."""
    participation = {
        "pattern": "always",
        "dropout": 0.3,
        "latency": {"distribution": "constant", "params": {"value": [1, 1, 1, 1, 5, 5]}},
        "deadline": 2.0,
    }
    inline = {"kind": "inline", "num_actors": 1}
    path = write_scenario(tmp_path, small(participation, engine=inline), "faults.toml")
    run_dir, _ = run_scenario(load_scenario(path), tmp_path / "faults")
    run = load_run(run_dir)
    part = run.participation.set_index(["round", "client"]).sort_index()
    loaded = load_scenario(path)
    faults = build_faults(
        loaded.participation,
        num_clients=NUM_CLIENTS,
        seed=loaded.seed,
        source=loaded.source,
        base_dir=loaded.base_dir,
    )
    assert faults is not None
    everyone = np.arange(NUM_CLIENTS)
    dropped = np.concatenate([faults.outcome(r, everyone).dropped for r in range(1, ROUNDS + 1)])
    stragglers = np.tile(everyone >= 4, ROUNDS)
    np.testing.assert_array_equal(part["dropped"], dropped)
    np.testing.assert_array_equal(part["late"], stragglers & ~dropped)
    np.testing.assert_array_equal(part["replied"], ~dropped & ~stragglers)
    assert part["available"].all() and part["selected"].all() and not part["failed"].any()
    assert dropped.any() and (stragglers & ~dropped).any()
    # Only replies that arrived gave training metrics...
    train = run.metrics[(run.metrics.phase == "train") & run.metrics.client.notna()]
    trained = set(zip(train["round"].tolist(), train["client"].astype(int).tolist(), strict=True))
    assert trained == pairs(run.participation, "replied")
    # ...and the model equals a run where only those clients were reachable at all.
    replied = sorted(pairs(run.participation, "replied"))
    trace = pd.DataFrame(replied, columns=["round", "client"])
    trace.to_csv(tmp_path / "replied.csv", index=False)
    path = write_scenario(
        tmp_path,
        small({"pattern": "trace", "trace": "replied.csv"}, engine=inline),
        "replayed.toml",
    )
    replay_dir, _ = run_scenario(load_scenario(path), tmp_path / "replayed")
    assert pairs(load_run(replay_dir).participation, "replied") == set(replied)
    assert_same_model(final_model(run_dir), final_model(replay_dir))


FAILING_APP = """
import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg, context):
    client = int(context.node_config["partition-id"])
    if client == 1:
        raise RuntimeError("client 1 is broken")
    arrays = msg.content["arrays"]
    new = ArrayRecord({k: Array(arrays[k].numpy() + client) for k in arrays})
    return Message(RecordDict({"arrays": new, "metrics": MetricRecord({"num-examples": 1})}),
                   reply_to=msg)


def make_model():
    return torch.nn.Linear(2, 1)
"""


def test_failed_replies_are_recorded_and_not_aggregated(tmp_path: Path, ray_session: None) -> None:
    (tmp_path / "app.py").write_text(FAILING_APP)
    scenario = {
        "name": "failing",
        "rounds": 2,
        "data": {"num_clients": 4},
        "model": {"factory": "app.py:make_model"},
        "client": {"app": "app.py:app"},
        "participation": {"pattern": "always"},
        "strategy": {"name": "fedavg", "uniform_weights": True},
        "engine": {"num_actors": 1},
    }
    path = write_scenario(tmp_path, scenario)
    run_dir, _ = run_scenario(load_scenario(path), tmp_path / "run")
    run = load_run(run_dir)
    part = run.participation
    failed = part["client"] == 1
    np.testing.assert_array_equal(part["failed"], failed)
    np.testing.assert_array_equal(part["replied"], ~failed)
    assert part["selected"].all() and not part[["dropped", "late"]].any().any()
    assert [e["client"] for e in run.events if e["event"] == "client_failed"] == [1, 1]
    rates = participation_rates(participation_matrix(run, "replied"))
    assert rates["rate"].tolist() == [1.0, 0.0, 1.0, 1.0]
    # Each round adds the mean of the partition ids that replied: (0 + 2 + 3) / 3.
    with np.load(run_dir / "final_model.npz") as final:
        initial = load_initial(tmp_path)
        for name in ("weight", "bias"):
            np.testing.assert_allclose(final[name], initial[name] + 2 * 5 / 3, rtol=1e-6)


def load_initial(tmp_path: Path) -> dict[str, np.ndarray]:
    model = build_model(
        {"factory": "app.py:make_model"},
        input_shape=(1,),
        num_classes=1,
        seed=0,
        source="",
        base_dir=tmp_path,
    )
    return {k: v.numpy() for k, v in model.state_dict().items()}
