"""Cohort training (``engine.cohort``): a worker's messages trained as one stacked model.

The promise is "exactly the local training of today, per client": every test here
compares a cohort against the same messages served one at a time through the real
serving path (:class:`~fedsim.engine.inline_grid.InlineGrid` over fedsim's ClientApp
and a client data store on disk).

Tolerance. A vmapped step sums the same products as the sequential one, in another
order (batched matrix products): about 1e-8 relative per operation in float32. A few
SGD steps keep parameters within 1e-5 of each other; the metric of a ReLU model may
differ more when a unit's input sits that close to 0 and flips, so runs of many
rounds are compared on accuracy, not on parameters. Stream positions, example
counts and everything the strategies see besides the arrays are equal exactly.
"""

from __future__ import annotations

import copy as copy_module
import json
import os
import pickle
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import MessageType

from fedsim import keys
from fedsim.analysis import load_run
from fedsim.arrays import Layout, RowArray
from fedsim.client.app import ClientSpec, FedsimClientApp, HookedClientApp
from fedsim.client.device import state_to_record
from fedsim.config import load_scenario, scenario_from_dict
from fedsim.data.datasets import Dataset
from fedsim.data.store import ClientDataStore
from fedsim.engine.identity import node_id_of
from fedsim.engine.inline_grid import InlineGrid
from fedsim.engine.serving import CohortPolicy
from fedsim.models import build_model
from fedsim.seeding import rng
from fedsim.simulation import resume_run, run_scenario
from tests.helpers import (
    Crash,
    assert_same_results,
    crash_after,
    start_cli,
    wait_for_checkpoint,
)

# Float32 rounding of a few vmapped SGD steps (see the module docstring).
ATOL, RTOL = 1e-5, 1e-4

SIZES = (7, 12, 5, 9)  # unequal clients: short last batches, unequal step counts


def write_store(folder: Path, input_shape: tuple[int, ...], sizes: tuple[int, ...]) -> Path:
    generator = rng(0, "test-cohort")
    total = sum(sizes)
    x = generator.standard_normal((total + 8, *input_shape)).astype(np.float32)
    y = generator.integers(0, 3, size=total + 8)
    data = Dataset("toy", x[:total], y[:total], x[total:], y[total:], num_classes=3)
    bounds = np.cumsum((0, *sizes))
    train = [np.arange(bounds[k], bounds[k + 1]) for k in range(len(sizes))]
    test = [np.arange(0, 2 + k) for k in range(len(sizes))]  # local test splits of 2..5
    ClientDataStore.write(folder, data, train, test)
    return folder


def spec_for(
    store: Path, model: dict[str, Any], shape: tuple[int, ...], device: str = "cpu", **client: Any
) -> ClientSpec:
    fields: dict[str, Any] = {
        "local_steps": None,
        "local_epochs": 1,
        "batch_size": 4,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 1e-3,
        "eval_batch_size": 3,
    }
    fields.update(client)
    return ClientSpec.make(
        model=model,
        data_dir=str(store),
        input_shape=shape,
        num_classes=3,
        seed=1,
        source="test.toml",
        base_dir=str(store.parent),
        device=device,
        **fields,
    )


def factory_spec(tmp_path: Path, body: str, preamble: str = "", **client: Any) -> ClientSpec:
    """A spec for 6-feature clients whose model is a user factory ``make`` in a file, its
    one-line ``body`` after ``preamble`` (both with ``torch.nn`` as ``nn``)."""
    shape = (6,)
    store = write_store(tmp_path / "store", shape, SIZES)
    source = f"from torch import nn\n{preamble}def make(input_shape, num_classes):\n    {body}\n"
    (tmp_path / "factory.py").write_text(source)
    return spec_for(store, {"factory": "factory.py:make"}, shape, **client)


def initial_arrays(spec: ClientSpec) -> ArrayRecord:
    model = build_model(
        json.loads(spec.model_spec),
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
        seed=spec.seed,
        source=spec.source,
        base_dir=Path(spec.base_dir),
    )
    return state_to_record(model)


def serve_rounds(
    spec: ClientSpec, policy: CohortPolicy, rounds: int, message_type: str = MessageType.TRAIN
) -> tuple[InlineGrid, list[list[Message]]]:
    """``rounds`` rounds of the same global model sent to every client."""
    grid = InlineGrid(
        HookedClientApp(FedsimClientApp(spec), {}), num_clients=len(SIZES), cohort=policy
    )
    arrays = initial_arrays(spec)
    out = []
    for rnd in range(1, rounds + 1):
        content = RecordDict({keys.ARRAYS: arrays, "config": ConfigRecord({"server-round": rnd})})
        messages = [
            grid.create_message(content, message_type, node_id_of(c), str(rnd))
            for c in range(len(SIZES))
        ]
        out.append(list(grid.send_and_receive(messages)))
    return grid, out


def streams(grid: InlineGrid) -> dict[int, dict[str, Any]]:
    return {
        node: dict(context.state.config_records[keys.STREAM_STATE])
        for node, context in grid.contexts.items()
    }


def assert_replies_close(cohort: list[Message], alone: list[Message]) -> None:
    assert len(cohort) == len(alone)
    for a, b in zip(cohort, alone, strict=True):
        assert not a.has_error(), a.error.reason if a.has_error() else ""
        assert a.metadata.src_node_id == b.metadata.src_node_id
        metrics_a, metrics_b = a.content["metrics"], b.content["metrics"]
        assert set(metrics_a) == set(metrics_b)
        assert metrics_a[keys.NUM_EXAMPLES] == metrics_b[keys.NUM_EXAMPLES]
        for name in metrics_a:
            np.testing.assert_allclose(metrics_a[name], metrics_b[name], rtol=RTOL, atol=ATOL)
        if keys.ARRAYS in a.content:
            arrays_a, arrays_b = a.content[keys.ARRAYS], b.content[keys.ARRAYS]
            assert list(arrays_a) == list(arrays_b)
            for name in arrays_a:
                left, right = arrays_a[name].numpy(), arrays_b[name].numpy()
                assert left.dtype == right.dtype and left.shape == right.shape
                np.testing.assert_allclose(left, right, rtol=RTOL, atol=ATOL, err_msg=name)


MODELS: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "logreg": ({"name": "logreg"}, (6,)),
    "mlp": ({"name": "mlp", "hidden": [8, 8]}, (6,)),
    "lenet5": ({"name": "lenet5"}, (1, 28, 28)),
    "fedau-cnn": ({"name": "fedau-cnn", "hidden": [16, 8]}, (3, 32, 32)),
    "fedau-cnn-1d": ({"name": "fedau-cnn", "hidden": [16]}, (1, 40)),
    "resnet20-group": ({"name": "resnet20", "norm": "group"}, (3, 16, 16)),
}


@pytest.fixture
def float32_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch runs CUDA convolutions in TF32 by default (about 1e-3 relative, in both
    modes, with different algorithms): compare cohorts on CUDA in full float32 (matrix
    products already are: torch.get_float32_matmul_precision() is "highest")."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ],
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("label", sorted(MODELS))
def test_cohort_training_equals_one_at_a_time_for_every_builtin_model(
    tmp_path: Path, flower_identity: None, float32_arithmetic: None, label: str, device: str
) -> None:
    """Momentum and weight decay, one local epoch over unequal clients (short last
    batches, 2 to 3 steps), two rounds (the stream goes on to its next epoch)."""
    model, shape = MODELS[label]
    spec = spec_for(write_store(tmp_path / "store", shape, SIZES), model, shape, device)
    # A number, not "auto": on the CPU "auto" trains 2-D convolutions one at a time.
    cohort_grid, cohort = serve_rounds(spec, CohortPolicy(len(SIZES)), rounds=2)
    alone_grid, alone = serve_rounds(spec, CohortPolicy("off"), rounds=2)
    for round_cohort, round_alone in zip(cohort, alone, strict=True):
        assert_replies_close(round_cohort, round_alone)
    assert streams(cohort_grid) == streams(alone_grid)
    assert cohort_grid.stats["cohort_train"] == 2 * len(SIZES)
    assert cohort_grid.stats["cohort_passes"] == 2
    assert alone_grid.stats["cohort_train"] == 0


def test_local_steps_stream_positions_are_those_of_one_at_a_time(
    tmp_path: Path, flower_identity: None
) -> None:
    """``local_steps`` continues each client's stream across rounds and epochs: 5 steps
    of 4 over clients of 5 to 12 examples cross epoch boundaries at different steps."""
    model, shape = MODELS["mlp"]
    store = write_store(tmp_path / "store", shape, SIZES)
    spec = spec_for(store, model, shape, local_steps=5, local_epochs=None)
    cohort_grid, cohort = serve_rounds(spec, CohortPolicy(3), rounds=3)
    alone_grid, alone = serve_rounds(spec, CohortPolicy("off"), rounds=3)
    for round_cohort, round_alone in zip(cohort, alone, strict=True):
        assert_replies_close(round_cohort, round_alone)
    assert streams(cohort_grid) == streams(alone_grid)
    # 4 messages with at most 3 per cohort: passes of 2 and 2, every round.
    assert cohort_grid.stats["cohort_passes"] == 6


def test_smooth_model_without_momentum_matches_to_float32_rounding(
    tmp_path: Path, flower_identity: None
) -> None:
    """With a smooth activation nothing can flip: plain SGD agrees to a few ulps."""
    spec = factory_spec(
        tmp_path,
        "return nn.Sequential(nn.Linear(input_shape[0], 16), nn.Tanh(),"
        " nn.Linear(16, num_classes))",
        momentum=0.0,
        weight_decay=0.0,
    )
    _, cohort = serve_rounds(spec, CohortPolicy("auto"), rounds=1)
    _, alone = serve_rounds(spec, CohortPolicy("off"), rounds=1)
    for a, b in zip(cohort[0], alone[0], strict=True):
        for name in a.content[keys.ARRAYS]:
            left = a.content[keys.ARRAYS][name].numpy()
            right = b.content[keys.ARRAYS][name].numpy()
            np.testing.assert_allclose(left, right, rtol=0, atol=3e-7)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_evaluation_cohort_equals_one_at_a_time(
    tmp_path: Path, flower_identity: None, float32_arithmetic: None, device: str
) -> None:
    model, shape = MODELS["fedau-cnn-1d"]
    spec = spec_for(write_store(tmp_path / "store", shape, SIZES), model, shape, device)
    cohort_grid, cohort = serve_rounds(spec, CohortPolicy("auto"), 1, MessageType.EVALUATE)
    _, alone = serve_rounds(spec, CohortPolicy("off"), 1, MessageType.EVALUATE)
    assert_replies_close(cohort[0], alone[0])
    assert [r.content["metrics"][keys.NUM_EXAMPLES] for r in cohort[0]] == [2, 3, 4, 5]
    assert cohort_grid.stats["cohort_evaluate"] == len(SIZES)


def test_auto_trains_2d_convolutions_one_at_a_time_on_the_cpu(
    tmp_path: Path, flower_identity: None
) -> None:
    """Grouped convolutions are slower than sequential ones on the CPU: "auto" says so
    and serves one message at a time; a number forces cohorts (the test above)."""
    model, shape = MODELS["lenet5"]
    spec = spec_for(write_store(tmp_path / "store", shape, SIZES), model, shape)
    grid, _ = serve_rounds(spec, CohortPolicy("auto"), rounds=1)
    assert grid.stats["cohort_train"] == 0
    (reason,) = grid.cohort_fallbacks
    assert reason.startswith("auto: Conv2d trains faster one client at a time on the CPU")


def test_batchnorm_model_falls_back_and_says_why(tmp_path: Path, flower_identity: None) -> None:
    shape = (3, 16, 16)
    store = write_store(tmp_path / "store", shape, SIZES)
    spec = spec_for(
        store, {"name": "resnet20", "norm": "batch"}, shape, local_steps=1, local_epochs=None
    )
    grid, cohort = serve_rounds(spec, CohortPolicy("auto"), rounds=1)
    _, alone = serve_rounds(spec, CohortPolicy("off"), rounds=1)
    for a, b in zip(cohort[0], alone[0], strict=True):  # served one at a time: bit for bit
        for name in a.content[keys.ARRAYS]:
            assert a.content[keys.ARRAYS][name].data == b.content[keys.ARRAYS][name].data
    assert grid.stats["cohort_train"] == 0
    assert dict(grid.cohort_fallbacks) == {"BatchNorm2d keeps running statistics": len(SIZES)}


def test_random_ops_fall_back_with_vmaps_reason(tmp_path: Path, flower_identity: None) -> None:
    """Dropout draws from the global RNG one client at a time; a cohort could not
    reproduce that, so vmap's refusal is the reason given."""
    spec = factory_spec(
        tmp_path,
        "return nn.Sequential(nn.Linear(input_shape[0], 8), nn.Dropout(0.5),"
        " nn.Linear(8, num_classes))",
    )
    grid, replies = serve_rounds(spec, CohortPolicy("auto"), rounds=1)
    assert not any(reply.has_error() for reply in replies[0])
    assert grid.stats["cohort_train"] == 0
    (reason,) = grid.cohort_fallbacks
    assert reason.startswith("RuntimeError: ") and "random" in reason.lower()


def test_memory_budget_splits_a_round_into_several_cohorts(
    tmp_path: Path, flower_identity: None
) -> None:
    model, shape = MODELS["mlp"]
    store = write_store(tmp_path / "store", shape, SIZES)
    spec = spec_for(store, model, shape)
    app = FedsimClientApp(spec)
    limit, reason = app.cohort_limit(MessageType.TRAIN, max_clients=None, memory_mb=None)
    assert reason is None and limit >= len(SIZES)
    from fedsim.client.app import _workspace

    per_client = _workspace(spec)._bytes_per_client[MessageType.TRAIN]
    budget_mb = 2.5 * per_client / (1 << 20)  # room for two clients
    grid, replies = serve_rounds(spec, CohortPolicy("auto", budget_mb), rounds=1)
    _, alone = serve_rounds(spec, CohortPolicy("off"), rounds=1)
    assert_replies_close(replies[0], alone[0])
    assert grid.stats["cohort_passes"] == 2 and grid.stats["cohort_train"] == 4


def test_a_bad_message_in_a_cohort_gets_its_own_error(
    tmp_path: Path, flower_identity: None
) -> None:
    """A cohort that raises is served again one message at a time."""
    model, shape = MODELS["mlp"]
    spec = spec_for(write_store(tmp_path / "store", shape, SIZES), model, shape)
    grid = InlineGrid(FedsimClientApp(spec), num_clients=len(SIZES))
    good = RecordDict({keys.ARRAYS: initial_arrays(spec), "config": ConfigRecord()})
    bad_arrays = initial_arrays(spec)
    first = next(iter(bad_arrays))
    bad_arrays[first] = Array(np.zeros(3, np.float32))  # the wrong shape
    bad = RecordDict({keys.ARRAYS: bad_arrays, "config": ConfigRecord()})
    messages = [
        grid.create_message(bad if c == 2 else good, MessageType.TRAIN, node_id_of(c), "1")
        for c in range(len(SIZES))
    ]
    replies = list(grid.send_and_receive(messages))
    assert [reply.has_error() for reply in replies] == [False, False, True, False]
    assert "size mismatch" in replies[2].error.reason or "shape" in replies[2].error.reason
    (reason,) = grid.cohort_fallbacks
    assert reason.startswith("a cohort raised ValueError")


def test_a_users_client_app_is_served_one_message_at_a_time(
    tmp_path: Path, flower_identity: None
) -> None:
    from flwr.clientapp import ClientApp

    app = ClientApp()
    seen: list[int] = []

    @app.train()
    def train(message: Message, context: Any) -> Message:
        seen.append(message.metadata.dst_node_id)
        return Message(RecordDict(), reply_to=message)

    grid = InlineGrid(HookedClientApp(app, {}), num_clients=3)
    content = RecordDict({"config": ConfigRecord()})
    messages = [
        grid.create_message(content, MessageType.TRAIN, node_id_of(c), "1") for c in range(3)
    ]
    list(grid.send_and_receive(messages))
    assert seen == [node_id_of(c) for c in range(3)]
    assert grid.stats["cohort_train"] == 0 and not grid.cohort_fallbacks
    # The Ray engine sends cohort-sized calls only to an app that says it takes cohorts.
    assert not HookedClientApp(app, {}).serves_cohorts
    assert HookedClientApp(FedsimClientApp.__new__(FedsimClientApp), {}).serves_cohorts


# --- whole runs ---------------------------------------------------------------------


def digits(strategy: dict[str, Any], cohort: str | int, **changes: Any) -> dict[str, Any]:
    scenario: dict[str, Any] = {
        "name": f"cohort-{strategy['name']}",
        "seed": 3,
        "rounds": 6,
        "data": {"dataset": "digits", "num_clients": 12, "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "hidden": [32]},
        "client": {"local_steps": 5, "batch_size": 16, "lr": 0.1, "momentum": 0.5},
        "participation": {"pattern": "bernoulli", "rates": 0.6},
        "strategy": strategy,
        "engine": {"kind": "inline", "cohort": cohort},
        "evaluate": {"every": 3},
    }
    scenario.update(changes)
    return scenario


def run(tmp_path: Path, raw: dict[str, Any], name: str) -> tuple[Path, dict[str, Any]]:
    scenario = scenario_from_dict(raw, source=f"{name}.toml", base_dir=tmp_path)
    return run_scenario(scenario, tmp_path / name)


STRATEGIES = {
    "fedau": {"name": "fedau"},
    "fedlaw": {"name": "fedlaw", "server_epochs": 2, "proxy_per_class": 3},
    "gossip-vc": {"name": "gossip-vc", "topology": "ring"},
}


@pytest.mark.slow
@pytest.mark.parametrize("label", sorted(STRATEGIES))
def test_runs_with_cohorts_match_runs_without(tmp_path: Path, label: str) -> None:
    """FedAU, FedLAW and gossip end to end: the same participation, events and example
    counts; the same accuracy up to float32 rounding; every client-round in a cohort."""
    runs = {c: run(tmp_path, digits(STRATEGIES[label], c), f"{label}-{c}") for c in ("auto", "off")}
    (on_dir, on), (off_dir, off) = runs["auto"], runs["off"]
    assert on["client_rounds"] == off["client_rounds"] > 0
    assert on["cohort_client_rounds"] == on["client_rounds"] and off["cohort_client_rounds"] == 0
    run_on, run_off = load_run(on_dir), load_run(off_dir)
    assert run_on.participation.equals(run_off.participation)
    untimed = [
        r.metrics[r.metrics.phase != "timing"].reset_index(drop=True) for r in (run_on, run_off)
    ]
    assert untimed[0][["round", "client", "phase", "metric"]].equals(
        untimed[1][["round", "client", "phase", "metric"]]
    )
    np.testing.assert_allclose(untimed[0]["value"], untimed[1]["value"], rtol=1e-3, atol=1e-3)
    assert not any(e["event"] == "cohort_fallback" for e in run_on.events)


@pytest.mark.slow
def test_same_seed_gives_bitwise_identical_runs_with_cohorts(tmp_path: Path) -> None:
    raw = digits({"name": "fedau"}, "auto")
    first, _ = run(tmp_path, raw, "first")
    second, _ = run(tmp_path, raw, "second")
    a, b = np.load(first / "final_model.npz"), np.load(second / "final_model.npz")
    assert all(a[name].tobytes() == b[name].tobytes() for name in a.files)
    untimed = [
        load_run(d).metrics.query("phase != 'timing'").reset_index(drop=True)
        for d in (first, second)
    ]
    assert untimed[0].equals(untimed[1])


def test_fallback_is_an_event_and_the_summary_counts_it(tmp_path: Path) -> None:
    raw = digits({"name": "fedavg"}, "auto", rounds=2)
    raw["model"] = {"name": "resnet20", "norm": "batch"}
    raw["client"] = {"local_steps": 1, "batch_size": 4}
    raw["participation"] = {"pattern": "always"}
    run_dir, summary = run(tmp_path, _images(tmp_path, raw), "bn")
    assert summary["cohort_client_rounds"] == 0 and summary["client_rounds"] > 0
    events = [e for e in load_run(run_dir).events if e["event"] == "cohort_fallback"]
    assert events == [
        {"round": 1, "event": "cohort_fallback", "reason": "BatchNorm2d keeps running statistics"}
    ]


def _images(tmp_path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` on a small image data set written as an ``.npz``."""
    generator = rng(0, "test-cohort-images")
    path = tmp_path / "images.npz"
    np.savez(
        path,
        x_train=generator.standard_normal((40, 3, 8, 8)).astype(np.float32),
        y_train=generator.integers(0, 3, 40),
        x_test=generator.standard_normal((6, 3, 8, 8)).astype(np.float32),
        y_test=generator.integers(0, 3, 6),
    )
    raw["data"] = {"dataset": "npz", "path": str(path), "num_clients": 4, "partition": "iid"}
    return raw


@pytest.mark.slow
def test_sigkill_then_resume_is_identical_with_cohorts(tmp_path: Path) -> None:
    raw = digits({"name": "fedau"}, "auto", rounds=40, checkpoint={"every": 1})
    raw["evaluate"] = {"every": 5, "federated": True}
    raw["data"]["client_test_fraction"] = 0.2
    path = tmp_path / "killed.toml"
    path.write_text(tomli_w.dumps(raw))
    reference, _ = run_scenario(load_scenario(path), tmp_path / "reference")
    kill_round = random.Random(5).randint(2, 10)
    process = start_cli("run", str(path), "--out", "killed", cwd=tmp_path)
    wait_for_checkpoint(tmp_path / "killed", kill_round, process)
    time.sleep(random.Random(6).uniform(0.0, 0.05))
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    if (tmp_path / "killed" / "summary.json").exists():
        pytest.fail("the run finished before the kill: make it longer")
    resumed, summary = resume_run(tmp_path / "killed")
    assert_same_results(resumed, reference)
    assert summary["cohort_client_rounds"] == summary["client_rounds"] > 0


@pytest.mark.slow
def test_resume_after_a_fallback_reports_it_once(tmp_path: Path) -> None:
    """The fallback event of round 1 is in the checkpoint; the resumed run does not add
    it again, so its results equal an uninterrupted run's."""
    raw = _images(tmp_path, digits({"name": "fedavg"}, "auto", rounds=4))
    raw["model"] = {"name": "lenet5"}
    raw["client"] = {"local_steps": 2, "batch_size": 4}
    raw["checkpoint"] = {"every": 2}
    path = tmp_path / "fallback.toml"
    path.write_text(tomli_w.dumps(raw))
    reference, _ = run_scenario(load_scenario(path), tmp_path / "reference")
    with pytest.raises(Crash):
        run_scenario(load_scenario(path), tmp_path / "crashed", on_round_end=crash_after(3))
    resumed, summary = resume_run(tmp_path / "crashed")
    assert_same_results(resumed, reference)
    events = [e for e in load_run(resumed).events if e["event"] == "cohort_fallback"]
    assert [e["round"] for e in events] == [1]
    assert summary["cohort_client_rounds"] == 0 < summary["client_rounds"]


def test_cohort_replies_share_one_block_that_aggregation_reads_directly(
    tmp_path: Path, flower_identity: None
) -> None:
    """Each reply's arrays are slices of one (clients, parameters) block: bytes only on
    demand, equal to Array(ndarray)'s; Layout.stack reads the block's rows, exactly what
    it reads from plain copies; a pickle carries the block once; a copy is a plain Array."""
    model, shape = MODELS["mlp"]
    spec = spec_for(write_store(tmp_path / "store", shape, SIZES), model, shape)
    _, replies = serve_rounds(spec, CohortPolicy("auto"), rounds=1)
    records = [reply.content[keys.ARRAYS] for reply in replies[0]]
    arrays = [array for record in records for array in record.values()]
    assert all(isinstance(array, RowArray) for array in arrays)
    assert len({id(array.block[0]) for array in arrays}) == 1
    plain = [
        ArrayRecord({name: Array(np.array(array.numpy())) for name, array in record.items()})
        for record in records
    ]
    for record, copy in zip(records, plain, strict=True):
        assert all(record[name].data == copy[name].data for name in record)
    layout = Layout.of(records[0])
    shuffled = [records[2], records[0], records[3]]  # a subset, out of order
    from_block = layout.stack(shuffled)
    from_bytes = layout.stack([plain[2], plain[0], plain[3]])
    assert layout._shared_block(shuffled) is not None and layout._shared_block(plain) is None
    assert torch.equal(from_block, from_bytes)
    block = arrays[0].block[0]
    assert len(pickle.dumps(records, protocol=5)) < 1.5 * block.nbytes
    back = pickle.loads(pickle.dumps(records, protocol=5))
    assert all(back[k][n].data == records[k][n].data for k in range(4) for n in records[k])
    assert type(copy_module.deepcopy(arrays[0])) is Array


def test_a_parameter_the_loss_does_not_use_is_left_alone(
    tmp_path: Path, flower_identity: None
) -> None:
    """As ``torch.optim.SGD`` skips a parameter without a gradient (no weight decay, no
    momentum), so does a cohort."""
    spec = factory_spec(
        tmp_path,
        "return Model(input_shape[0], num_classes)",
        preamble=(
            "class Model(nn.Module):\n"
            "    def __init__(self, d, c):\n"
            "        super().__init__()\n"
            "        self.used, self.spare = nn.Linear(d, c), nn.Linear(d, c)\n"
            "    def forward(self, x):\n"
            "        return self.used(x)\n"
        ),
    )
    grid, cohort = serve_rounds(spec, CohortPolicy("auto"), rounds=1)
    _, alone = serve_rounds(spec, CohortPolicy("off"), rounds=1)
    assert grid.stats["cohort_train"] == len(SIZES) and not grid.cohort_fallbacks
    assert_replies_close(cohort[0], alone[0])
    initial = initial_arrays(spec)
    for reply in cohort[0]:
        assert reply.content[keys.ARRAYS]["spare.weight"].data == initial["spare.weight"].data
