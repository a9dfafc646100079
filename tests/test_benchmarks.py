"""The benchmark harness, and the engine optimisations it measures, keep their promises.

- ``python -m benchmarks.run --quick`` produces the table and the CSVs (nothing is
  asserted about time: CI machines are not benchmark machines);
- the plain loop does the very training fedsim's ClientApp and FedAvg do (same final
  model), so comparing against it is honest;
- the fast ``Array`` conversions give Flower's bytes and arrays exactly;
- batching messages per Ray call keeps the engine's semantics: replies in order, each
  message with its own content and context, a failure an error reply for that message.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from benchmarks import kill_resume
from benchmarks.plain_loop import run_plain
from benchmarks.run import GROUPS, plan
from benchmarks.workloads import small
from fedsim.arrays import array_to_numpy, numpy_to_array
from fedsim.config import scenario_from_dict
from fedsim.device import load_arrays, staged_load, staged_numpy, state_to_record
from fedsim.engine.identity import node_id_of, set_identity
from fedsim.runner import Prepared, prepare
from fedsim.strategies.fedavg import FedAvg
from tests.conftest import FixedGrid

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmark_writes_the_table_and_csvs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = ["benchmarks.run", "--quick", "--workloads", "small", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["workload"], r["way"]) for r in rows] == [
        ("small-1a", "plain"),
        ("small-1a", "fedsim"),
        ("small-1a", "inline"),
        ("small-1a", "flower"),
    ]
    assert float(rows[0]["ratio_to_plain"]) == 1.0
    assert all(float(r["round_ms"]) > 0 and float(r["peak_tree_mb"]) > 0 for r in rows)
    assert all(float(r["startup_s"]) > 0 for r in rows[1:])
    # Four ways, one training: the final models agree with the plain loop's.
    assert all(float(r["max_abs_diff_vs_plain"]) < 1e-5 for r in rows)
    with (tmp_path / "profile.csv").open() as handle:
        phases = [r["phase"] for r in csv.DictReader(handle)]
    assert phases[:4] == ["configure", "dispatch", "wait", "collect"] and "round" in phases
    assert "| small-1a | flower |" in done.stdout and "where a fedsim round goes" in done.stdout


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("quick", [True, False])
def test_every_planned_workload_is_a_valid_scenario(
    tmp_path: Path, quick: bool, device: str
) -> None:
    names = []
    for group in GROUPS:
        for workload in plan(group, quick, device, tmp_path, write=False):
            scenario = scenario_from_dict(workload.with_engine(4, device), base_dir=tmp_path)
            assert scenario.engine.num_actors == workload.actors
            assert scenario.engine.num_cpus_per_client == 4 / workload.actors
            assert scenario.engine.num_gpus_per_client == (
                1 / workload.actors if device == "cuda" else 0
            )
            assert not scenario.evaluate.central and scenario.checkpoint_every == 0
            names.append(workload.name)
    assert len(names) == len(set(names))
    if not quick:
        scale = [n for n in names if n.startswith("scale")]
        assert scale == ["scale-100000", "scale-1000"]


def in_process_fedsim(prepared: Prepared, rounds: int) -> dict[str, np.ndarray]:
    """fedsim's ClientApp and FedAvg driven by hand, without Ray."""
    set_identity(1)
    strategy = FedAvg(num_clients=prepared.scenario.data.num_clients)
    contexts: dict[int, Context] = {}
    assert prepared.initial_arrays is not None
    arrays = prepared.initial_arrays

    for rnd in range(1, rounds + 1):
        grid: Any = FixedGrid([node_id_of(int(c)) for c in prepared.pattern.reachable(rnd)])
        replies = []
        for message in strategy.configure_train(rnd, arrays, ConfigRecord(), grid):
            node = message.metadata.dst_node_id
            client = node - node_id_of(0)
            context = contexts.setdefault(
                node,
                Context(
                    run_id=1,
                    node_id=node,
                    node_config={"partition-id": client, "num-partitions": 100},
                    state=RecordDict(),
                    run_config={},
                ),
            )
            message.metadata.__dict__["_message_id"] = f"m{rnd}-{client}"
            set_identity(1, node)
            replies.append(prepared.app(message, context))
            set_identity(1)
        new, _ = strategy.aggregate_train(rnd, replies)
        assert new is not None
        arrays = new
    return {name: arrays[name].numpy() for name in arrays}


def test_plain_loop_trains_exactly_as_fedsims_client_app(tmp_path: Path) -> None:
    raw = small(rounds=3, warmup=1, actors=1).with_engine(1, "cpu")
    raw["client"]["momentum"] = 0.5  # the optimiser's state must not leak across clients
    scenario = scenario_from_dict(raw, base_dir=tmp_path)
    prepared = prepare(scenario, tmp_path / "run")
    expected = in_process_fedsim(prepared, 3)
    state, times = run_plain(prepared)
    assert len(times.rounds) == 3 and all(r["train"] > 0 for r in times.rounds)
    for name, value in expected.items():
        np.testing.assert_array_equal(state[name].numpy(), value)
    initial = prepared.initial_arrays
    assert initial is not None
    assert any(not np.array_equal(initial[n].numpy(), v) for n, v in expected.items())


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array(3.5, dtype=np.float64),
        np.arange(5, dtype=np.int64),
        np.zeros((0, 3), dtype=np.float16),
        np.ones((2, 3, 4), dtype=np.uint8),
    ],
)
def test_fast_array_conversions_match_flowers(array: np.ndarray) -> None:
    fast, flower = numpy_to_array(array), Array(array)
    assert (fast.data, fast.dtype, tuple(fast.shape)) == (flower.data, flower.dtype, flower.shape)
    view = array_to_numpy(flower)
    assert view.dtype == array.dtype and view.shape == array.shape
    np.testing.assert_array_equal(view, array)


def test_fast_array_conversions_fall_back_where_they_must() -> None:
    fortran = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert numpy_to_array(fortran).data == Array(fortran).data  # np.save's own layout
    np.testing.assert_array_equal(array_to_numpy(Array(fortran)), fortran)
    model = torch.nn.Linear(3, 2)
    record = state_to_record(model)
    assert list(record.keys()) == ["weight", "bias"]
    target = torch.nn.Linear(3, 2)
    load_arrays(target, record)
    assert torch.equal(target.weight, model.weight) and torch.equal(target.bias, model.bias)
    wrong = ArrayRecord({"weight": Array(np.zeros((3, 2), np.float32)), "bias": record["bias"]})
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_arrays(target, wrong)


def test_staged_copies_move_every_tensor_whole() -> None:
    tensors = [
        torch.arange(6, dtype=torch.float32).reshape(2, 3),
        torch.tensor(7, dtype=torch.int64),
        torch.zeros(0, dtype=torch.float16),
        torch.arange(5, dtype=torch.float64),
    ]
    copies = staged_numpy(tensors)
    for tensor, copy in zip(tensors, copies, strict=True):
        assert copy.dtype == tensor.numpy().dtype and copy.shape == tuple(tensor.shape)
        np.testing.assert_array_equal(copy, tensor.numpy())
    sources = [np.full(tuple(t.shape), 3, dtype=t.numpy().dtype) for t in tensors]
    staged_load(tensors, sources)
    assert tensors[0].eq(3).all() and int(tensors[1]) == 3 and tensors[3].eq(3).all()


# A ClientApp that adds (partition + 1 + earlier calls) to every array, mutates the content it
# receives (each message must have its own), and kills its worker for partition 3.
batch_app = ClientApp()


@batch_app.train()
def _train(message: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    if partition == 3:
        os._exit(1)
    record = context.state.config_records.get("calls", ConfigRecord({"n": 0}))
    calls = int(record["n"])  # type: ignore[arg-type]
    context.state.config_records["calls"] = ConfigRecord({"n": calls + 1})
    arrays = message.content.array_records["arrays"]
    new = ArrayRecord({k: Array(arrays[k].numpy() + partition + 1 + calls) for k in arrays})
    # A careless app: the next message must not see this.
    message.content.array_records["arrays"] = ArrayRecord()
    reply = RecordDict({"arrays": new, "metrics": MetricRecord({"num-examples": 1})})
    return Message(reply, reply_to=message)


def first(reply: Message) -> float:
    return float(reply.content.array_records["arrays"]["w"].numpy()[0])


def test_batched_dispatch_keeps_the_engines_semantics(ray_session: None) -> None:
    from fedsim.engine.ray_grid import RayGrid

    grid = RayGrid(batch_app, num_clients=6, num_actors=1)
    try:
        content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))})})
        healthy = [node_id_of(c) for c in (5, 0, 2, 4)]
        replies = list(grid.send_and_receive([Message(content, n, "train") for n in healthy]))
        assert [r.metadata.src_node_id for r in replies] == healthy
        assert [first(r) for r in replies] == [6.0, 1.0, 3.0, 5.0]
        assert grid.stats["calls"] == 1 and grid.stats["messages"] == 4  # one call, 4 messages
        # Partition 3 kills the actor in the middle of a batch: the batch runs again one
        # message per call, and only partition 3 is answered with the error.
        nodes = [node_id_of(c) for c in (5, 0, 3, 2, 4)]
        replies = list(grid.send_and_receive([Message(content, n, "train") for n in nodes]))
        assert [r.metadata.src_node_id for r in replies] == nodes
        assert [r.has_error() for r in replies] == [False, False, True, False, False]
        assert "actor died" in str(replies[2].error.reason)
        got = [first(r) for r in replies if not r.has_error()]
        assert got == [7.0, 2.0, 4.0, 6.0]  # each context counted one earlier call, not two
        assert grid.stats["calls"] == 1 + 1 + 5 and grid.stats["messages"] == 4 + 5 + 5
    finally:
        grid.shutdown()


@pytest.mark.slow
def test_a_sigkilled_run_resumes_to_the_reference_results(tmp_path: Path) -> None:
    """One trial of ``python -m benchmarks.kill_resume``: SIGKILL a ``fedsim run`` after a
    checkpoint, ``fedsim resume`` it, and get exactly the uninterrupted run's results."""
    assert kill_resume.main(["--trials", "1", "--out", str(tmp_path)]) == 0
    with (tmp_path / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    row = rows[0]
    assert row["identical"] == "True", row["first_difference"]
    assert (row["kind"], row["run_exit"], row["resume_exit"]) == ("digits", "-9", "0")
    assert 1 <= int(row["kill_round"]) <= int(row["checkpoint_round"]) < int(row["rounds"])
    assert not (tmp_path / "trials" / "000-digits" / "checkpoint.pkl").exists()
