"""The checkpoint file carries no code (issue 13, point 4).

A checkpoint written by a real run is a zip of JSON, ``.npy`` (read with
``allow_pickle=False``) and Flower protobuf members, and loads with every pickle
entry point disabled; crafted pickles in a run directory (an old
``checkpoint.pkl``, a pickle under the new name, a pickled member inside a zip)
make ``fedsim resume`` print one line and exit 2 without running them; the data
tree encoder round-trips bit for bit and refuses what is not data; a strategy
whose state is not data is checkpointed only when the run opts in with
``[checkpoint] allow_pickle = true`` and resumed only with ``--allow-pickle``.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.serverapp.strategy import FedAdam
from typer.testing import CliRunner

import fedsim.simulation.checkpoint as checkpoint_module
from fedsim.analysis import load_run
from fedsim.cli import app as cli_app
from fedsim.config import load_scenario
from fedsim.errors import ScenarioError
from fedsim.simulation import resume_run, run_scenario
from fedsim.simulation.checkpoint import (
    ATTRIBUTES,
    CHECKPOINT_FILE,
    FORMAT_VERSION,
    MANIFEST,
    OLD_CHECKPOINT_FILE,
    PICKLE_MEMBER,
    Checkpoint,
    CheckpointError,
    NotData,
    StrategyState,
    check_tree,
    decode_tree,
    encode_tree,
    load_checkpoint,
    restore_strategy,
    rng_state,
    save_checkpoint,
    strategy_state,
)

FIXTURES = Path(__file__).parent / "fixtures"
APP = FIXTURES / "faulty_client_app.py"
RNG_STRATEGY = FIXTURES / "rng_strategy.py"


# --- runs ------------------------------------------------------------------------------


def inline_scenario(strategy: dict[str, Any], **changes: Any) -> dict[str, Any]:
    scenario: dict[str, Any] = {
        "name": "no-pickle",
        "seed": 4,
        "rounds": 4,
        "data": {"num_clients": 3},
        "model": {"factory": f"{APP}:make_model"},
        "client": {"app": f"{APP}:app"},
        "participation": {"pattern": "always"},
        "strategy": strategy,
        "engine": {"kind": "inline"},
        "checkpoint": {"every": 1},
    }
    scenario.update(changes)
    return scenario


class Crash(Exception):
    """Stands in for a process dying after some round."""


def crash_after(round_: int) -> Any:
    def on_round_end(rnd: int, _accuracy: float | None) -> None:
        if rnd == round_:
            raise Crash(f"crashed after round {rnd}")

    return on_round_end


def crashed_run(tmp_path: Path, scenario: dict[str, Any], name: str, after: int = 2) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(tomli_w.dumps(scenario))
    run_dir = tmp_path / name
    with pytest.raises(Crash):
        run_scenario(load_scenario(path), run_dir, on_round_end=crash_after(after))
    return run_dir


def reference_run(tmp_path: Path, scenario: dict[str, Any]) -> Path:
    path = tmp_path / "reference.toml"
    path.write_text(tomli_w.dumps(scenario))
    run_dir, _ = run_scenario(load_scenario(path), tmp_path / "reference")
    return run_dir


def assert_same_model(a_dir: Path, b_dir: Path) -> None:
    a, b = np.load(a_dir / "final_model.npz"), np.load(b_dir / "final_model.npz")
    assert a.files == b.files
    for name in a.files:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name


TAGS = {"tuple", "dict", "items", "ordered", "float", "function", "bytes", "array", "scalar"}
TAGS |= {"tensor", "flower"}


def tags(tree: Any) -> set[str]:
    """Every tag a data tree of the manifest uses (each JSON object has exactly one)."""
    if isinstance(tree, list):
        return set().union(*(tags(item) for item in tree))
    if not isinstance(tree, dict):
        return set()
    (tag,) = set(tree) & TAGS
    body = tree[tag]
    inner = tags(list(body.values())) if tag == "dict" else tags(body)
    return {tag} | inner


def forbid_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, any unpickling fails loudly."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_unpickling(monkeypatch)


def test_a_real_checkpoint_holds_json_npy_and_protobuf_only(tmp_path: Path) -> None:
    """Flower's FedAdam (attributes: m_t, v_t, current arrays, an aggregation function by
    name), the ClientApp's contexts, results rows and RNG states: no pickle anywhere."""
    run_dir = crashed_run(tmp_path, inline_scenario({"name": "flwr:FedAdam", "eta": 0.05}), "c")
    path = run_dir / CHECKPOINT_FILE
    assert sorted(p.name for p in run_dir.glob("checkpoint*")) == [CHECKPOINT_FILE]
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members.pop(MANIFEST))
    assert manifest["format"] == "fedsim-checkpoint" and manifest["version"] == FORMAT_VERSION
    assert manifest["round"] == 2 and manifest["strategy"]["kind"] == ATTRIBUTES
    assert PICKLE_MEMBER not in members
    state = manifest["strategy"]["state"]["dict"]
    assert state["train_metrics_aggr_fn"] == {
        "function": "flwr.serverapp.strategy.strategy_utils:aggregate_metricrecords"
    }
    assert set(state["m_t"]["dict"]) == set(state["current_arrays"]["dict"]) == {"weight", "bias"}
    trees = ("model", "contexts", "results", "proxy_data", "rng")
    used = tags([manifest[key] for key in trees] + [manifest["strategy"]["state"]])
    assert {"dict", "items", "tuple", "array", "tensor", "flower", "function"} <= used <= TAGS
    assert {name.rsplit(".", 1)[1] for name in members} == {"npy", "pb"}
    for name, data in members.items():
        assert not data.startswith(b"\x80"), f"{name} looks like a pickle"
        if name.endswith(".npy"):
            array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
            assert not array.dtype.hasobject
    contexts = manifest["contexts"]["items"]
    assert sorted(node for node, _ in contexts) == sorted(load_checkpoint(run_dir).contexts)
    for _, context in contexts:
        parsed = ProtoContext()
        parsed.ParseFromString(members[context["member"]])
        assert parsed.node_config["partition-id"] is not None


def test_loading_a_real_checkpoint_unpickles_nothing_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = inline_scenario({"name": "flwr:FedAdam", "eta": 0.05})
    run_dir = crashed_run(tmp_path, scenario, "crashed")
    reference = reference_run(tmp_path, scenario)
    forbid_unpickling(monkeypatch)  # only now: the engine pickles message contents in memory
    loaded = load_checkpoint(run_dir)
    assert loaded.round == 2 and loaded.strategy.pickled is None
    monkeypatch.undo()
    resumed, _ = resume_run(run_dir)
    assert_same_model(resumed, reference)
    assert not (resumed / CHECKPOINT_FILE).exists()


# --- crafted pickles -------------------------------------------------------------------


class Marker:
    """Unpickling this creates ``path`` (a stand-in for running anything)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def cli_resume(run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``fedsim resume RUN_DIR EXTRA``, the CLI's own code run in this process (where a
    payload that ran would leave its marker just the same)."""
    args = ["resume", str(run_dir), *extra]
    result = CliRunner().invoke(cli_app, args)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def crafted_zip(path: Path, manifest: dict[str, Any], members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(MANIFEST, json.dumps(manifest))
        for name, data in members.items():
            archive.writestr(name, data)


def manifest_of(**changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format": "fedsim-checkpoint",
        "version": FORMAT_VERSION,
        "round": 1,
        "elapsed_s": 0.0,
        "source": "s.toml",
        "base_dir": ".",
        "model": {"dict": {}},
        "strategy": {"kind": "state_dict", "state": {"dict": {}}},
        "contexts": {"items": []},
        "results": {"dict": {"metrics": [], "participation": [], "events": []}},
        "proxy_data": None,
        "rng": {"dict": {}},
    }
    manifest.update(changes)
    return manifest


def test_resume_refuses_crafted_pickles_in_one_line_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    evil = pickle.dumps({"round": 3, "payload": Marker(marker)})
    assert not marker.exists()
    object_npy = io.BytesIO()
    np.save(object_npy, np.array([Marker(marker)], dtype=object), allow_pickle=True)
    cases: dict[str, tuple[dict[str, bytes], str]] = {
        "old": ({OLD_CHECKPOINT_FILE: evil}, "a checkpoint of an older fedsim, a pickle"),
        "renamed": ({CHECKPOINT_FILE: evil}, "not a fedsim checkpoint (a pickle"),
        "both": ({OLD_CHECKPOINT_FILE: evil, CHECKPOINT_FILE: evil}, "not a fedsim checkpoint"),
    }
    for name, (files, _) in cases.items():
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "scenario.toml").write_text("rounds = 3\n")
        for file, data in files.items():
            (run_dir / file).write_bytes(data)
    zips = {
        "pickled-state": (
            manifest_of(strategy={"kind": "attributes", "pickle": PICKLE_MEMBER}),
            {PICKLE_MEMBER: evil},
            "the strategy state is a pickle ([checkpoint] allow_pickle = true)",
        ),
        "object-array": (
            manifest_of(model={"dict": {"w": {"array": "data/1.npy"}}}),
            {"data/1.npy": object_npy.getvalue()},
            "unreadable checkpoint (ValueError: Object arrays cannot be loaded",
        ),
        "future": (manifest_of(version=99), {}, f"checkpoint format 99, this fedsim reads {2}"),
        "foreign": ({"format": "other"}, {}, "not a fedsim checkpoint (checkpoint.json of"),
        "tampered": (
            manifest_of(contexts={"items": [[1, {"flower": "Context", "member": "data/9.npy"}]]}),
            {},
            "unreadable checkpoint (ValueError:",
        ),
    }
    for name, (manifest, members, problem) in zips.items():
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "scenario.toml").write_text("rounds = 3\n")
        crafted_zip(run_dir / CHECKPOINT_FILE, manifest, members)
        cases[name] = ({}, problem)
    for name, (_, problem) in cases.items():
        run_dir = tmp_path / name
        done = cli_resume(run_dir)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (name, done.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"error: {run_dir}"), (name, lines)
        assert problem in lines[0], (name, lines)
        assert "Traceback" not in done.stderr
        assert not marker.exists(), f"{name}: the crafted pickle ran"


# --- the data tree encoder -------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal in type and value, arrays and tensors bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray | np.generic):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return b != b
    if isinstance(a, ArrayRecord):
        return list(a) == list(b) and all(same(a[k].numpy(), b[k].numpy()) for k in a)
    if isinstance(a, Context):
        return (a.node_id, a.node_config, a.run_config) == (b.node_id, b.node_config, b.run_config)
    return bool(a == b) and repr(a) == repr(b)


def test_tree_round_trip_is_exact() -> None:
    tree = {
        "scalars": [None, True, 0, -(2**70), 1.5, -0.0, float("inf"), float("nan"), "s", b"\x80"],
        "nested": {"tuple": (1, (2, [3])), "empty": {}, "list": []},
        "torch_state": torch.nn.Linear(2, 1).state_dict(),  # an OrderedDict of tensors
        3: "int key",
        (1, "a"): "tuple key",
        "arrays": [
            np.arange(6, dtype=np.float16).reshape(2, 3),
            np.asfortranarray(np.ones((2, 3))),
            np.array([1 + 2j]),
            np.array([True, False]),
            np.zeros((0, 4), np.uint8),
            np.array(["ab", "c"]),
        ],
        "numpy_scalars": [np.float32(1.25), np.int64(2**60), np.bool_(True)],
        "tensors": [
            torch.arange(4, dtype=torch.float32),
            torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
            torch.tensor([[1, 2]], dtype=torch.int64),
            torch.zeros(2, dtype=torch.uint8),
        ],
        "records": [
            ArrayRecord({"w": Array(np.arange(3.0))}),
            ConfigRecord({"lr": 0.1, "name": "x", "ids": [1, 2]}),
            MetricRecord({"loss": 0.5}),
            RecordDict({"m": MetricRecord({"n": 3})}),
            Context(
                run_id=1,
                node_id=9,
                node_config={"partition-id": 2},
                state=RecordDict(),
                run_config={},
            ),
        ],
    }
    encoded, members = encode_tree(tree)
    text = json.dumps(encoded, allow_nan=False)  # strict JSON: nan and inf are tagged
    back = decode_tree(json.loads(text), members)
    assert same(back, tree)
    assert back["records"][3]["m"]["n"] == 3
    assert back["records"][1]["ids"] == [1, 2]


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"rng": np.random.default_rng(0)}, "state['rng'] is a numpy.random._generator.Generator"),
        ({"f": [lambda: 0]}, "state['f'][0] is a function"),
        ({"s": {1, 2}}, "state['s'] is a set"),
        ({"o": np.array([object()], dtype=object)}, "state['o'] is a NumPy array of Python"),
    ],
)
def test_what_is_not_data_is_refused_by_name(value: Any, where: str) -> None:
    with pytest.raises(NotData, match=re.escape(where)):
        check_tree(value, "state")
    with pytest.raises(NotData, match=re.escape(where.replace("state", "value", 1))):
        encode_tree(value)


def aggregate(values: list[float]) -> float:
    """A module-level function a strategy may hold as an attribute."""
    return sum(values)


class FedAdamLike:
    """Like Flower's FedAdam: no state_dict, its state in attributes."""

    def __init__(self) -> None:
        self.eta = 0.1
        self.aggregate_fn = aggregate
        self.current_arrays: ArrayRecord | None = None
        self.m_t: dict[str, np.ndarray] | None = None
        self.v_t: dict[str, np.ndarray] | None = None
        self.rounds_seen: list[int] = []


def a_checkpoint(state: StrategyState) -> Checkpoint:
    return Checkpoint(
        round=3,
        arrays={"w": np.arange(4, dtype=np.float32)},
        strategy=state,
        contexts={},
        results={"metrics": [(1, None, "central", "loss", 0.5)], "participation": [], "events": []},
        source="/s.toml",
        base_dir="/",
        rng=rng_state(),
    )


def test_attributes_of_a_fedadam_like_strategy_round_trip_through_the_file(
    tmp_path: Path, no_unpickling: None
) -> None:
    (tmp_path / "scenario.toml").write_text("rounds = 9\n")
    strategy = FedAdamLike()
    strategy.current_arrays = ArrayRecord({"w": Array(np.array([1.0, 2.0], np.float32))})
    strategy.m_t = {"w": np.array([0.25, -1.0], np.float32)}
    strategy.v_t = {"w": np.array([4.0, 2.0], np.float32)}
    strategy.rounds_seen = [1, 2, 3]
    save_checkpoint(tmp_path, a_checkpoint(strategy_state(strategy)))
    loaded = load_checkpoint(tmp_path)
    fresh = FedAdamLike()
    restore_strategy(fresh, loaded.strategy)
    assert fresh.aggregate_fn is aggregate and fresh.eta == 0.1 and fresh.rounds_seen == [1, 2, 3]
    assert fresh.m_t is not None and fresh.v_t is not None and fresh.current_arrays is not None
    assert fresh.m_t["w"].tolist() == [0.25, -1.0] and fresh.v_t["w"].dtype == np.float32
    assert fresh.current_arrays["w"].numpy().tolist() == [1.0, 2.0]
    assert loaded.results["metrics"] == [(1, None, "central", "loss", 0.5)]


def test_flowers_fedadam_round_trips_through_the_file(tmp_path: Path) -> None:
    (tmp_path / "scenario.toml").write_text("rounds = 9\n")
    strategy = FedAdam(eta=0.1)
    strategy.m_t = {"w": np.array([0.25, -1.0])}
    strategy.v_t = {"w": np.array([4.0, 2.0])}
    strategy.current_arrays = ArrayRecord({"w": Array(np.array([3.0]))})
    save_checkpoint(tmp_path, a_checkpoint(strategy_state(strategy)))
    fresh = FedAdam(eta=0.1)
    restore_strategy(fresh, load_checkpoint(tmp_path).strategy)
    assert fresh.m_t["w"].tolist() == [0.25, -1.0] and fresh.v_t["w"].tolist() == [4.0, 2.0]
    assert fresh.current_arrays["w"].numpy().tolist() == [3.0]


def test_a_function_attribute_must_match_the_rebuilt_strategys() -> None:
    state = strategy_state(FedAdamLike())
    fresh = FedAdamLike()
    fresh.aggregate_fn = max  # type: ignore[assignment]
    with pytest.raises(CheckpointError, match=r"aggregate_fn was .*:aggregate, the rebuilt"):
        restore_strategy(fresh, state)


def test_non_data_attributes_need_the_opt_in(tmp_path: Path) -> None:
    (tmp_path / "scenario.toml").write_text("rounds = 9\n")
    strategy = FedAdamLike()
    strategy.rng = np.random.default_rng(3)  # type: ignore[attr-defined]
    with pytest.raises(NotData) as refused:
        strategy_state(strategy)
    assert str(refused.value) == (
        "FedAdamLike['rng'] is a numpy.random._generator.Generator, not data (a checkpoint "
        f"holds {checkpoint_module.DATA_KINDS}); give FedAdamLike state_dict()/load_state_dict() "
        "that return such data, or set [checkpoint] allow_pickle = true to pickle it (resume "
        "then needs: fedsim resume --allow-pickle)"
    )
    state = strategy_state(strategy, allow_pickle=True)
    assert state.pickled is not None
    save_checkpoint(tmp_path, a_checkpoint(state))
    with zipfile.ZipFile(tmp_path / CHECKPOINT_FILE) as archive:
        assert PICKLE_MEMBER in archive.namelist()
    with pytest.raises(CheckpointError, match="fedsim resume --allow-pickle"):
        load_checkpoint(tmp_path)
    fresh = FedAdamLike()
    restore_strategy(fresh, load_checkpoint(tmp_path, allow_pickle=True).strategy)
    assert fresh.rng.random() == np.random.default_rng(3).random()  # type: ignore[attr-defined]


# --- the opt-in, end to end ------------------------------------------------------------


def jitter_scenario(**checkpoint: Any) -> dict[str, Any]:
    return inline_scenario(
        {"name": f"{RNG_STRATEGY}:JitterFedAvg"}, checkpoint={"every": 1, **checkpoint}
    )


def test_a_strategy_that_is_not_data_records_checkpoint_failed_without_the_opt_in(
    tmp_path: Path,
) -> None:
    run_dir = crashed_run(tmp_path, jitter_scenario(), "refused", after=3)
    assert not (run_dir / CHECKPOINT_FILE).exists()
    failed = [e for e in load_run(run_dir).events if e["event"] == "checkpoint_failed"]
    assert len(failed) == 1 and failed[0]["round"] == 1
    assert failed[0]["reason"].startswith(
        "strategy state: NotData: JitterFedAvg['rng'] is a numpy.random._generator.Generator"
    )
    assert "[checkpoint] allow_pickle = true" in failed[0]["reason"]


def test_the_pickle_opt_in_resumes_only_with_allow_pickle(tmp_path: Path) -> None:
    scenario = jitter_scenario(allow_pickle=True)
    reference = reference_run(tmp_path, scenario)
    run_dir = crashed_run(tmp_path, scenario, "opted-in")
    refused = CliRunner().invoke(cli_app, ["resume", str(run_dir)])
    lines = refused.stderr.strip().splitlines()
    assert refused.exit_code == 2 and len(lines) == 1, lines
    assert lines[0] == (
        f"error: {run_dir / CHECKPOINT_FILE}: the strategy state is a pickle ([checkpoint] "
        "allow_pickle = true), and loading it runs code from the file; if you made this run "
        f"yourself: fedsim resume --allow-pickle {run_dir}"
    )
    resumed = CliRunner().invoke(cli_app, ["resume", "--allow-pickle", str(run_dir)])
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_model(run_dir, reference)
    assert not (run_dir / CHECKPOINT_FILE).exists()


def test_allow_pickle_is_a_boolean_scenario_key(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(jitter_scenario(allow_pickle=True)))
    assert load_scenario(path).checkpoint_allow_pickle is True
    path.write_text(tomli_w.dumps(jitter_scenario()))
    assert load_scenario(path).checkpoint_allow_pickle is False
    path.write_text(tomli_w.dumps(jitter_scenario(allow_pickle="yes")))
    with pytest.raises(ScenarioError, match=r"checkpoint\.allow_pickle: expected true or false"):
        load_scenario(path)
