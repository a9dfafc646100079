"""Faults injected into real runs: each ends as promised, and nothing is lost.

A raising ClientApp, a Ray worker that dies, a straggler past the timeout, a
NaN update, failure limits, and bad input to the command line. The ClientApp is
tests/fixtures/faulty_client_app.py ("training" = 0.5 × model + partition + 1 +
earlier calls), so every final model below is computed by hand (the toy runs and the
expected models: tests/helpers.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from flwr.app import Array, ArrayRecord, Message, RecordDict
from typer.testing import CliRunner

from fedsim.analysis import load_run
from fedsim.cli import app as cli_app
from fedsim.config import load_scenario
from fedsim.engine.identity import node_id_of
from fedsim.engine.ray_runtime import check_ray_address
from fedsim.errors import FedsimError, RunError
from fedsim.simulation.loop import divergence_error
from tests.helpers import assert_final, expected_model, failures, run_toy, toy_scenario


def test_raising_client_is_a_failure_and_the_round_goes_on(
    tmp_path: Path, ray_session: None
) -> None:
    # One client in four fails: exactly the max_failure_fraction allowed.
    scenario = toy_scenario(2, {"max_failure_fraction": 0.25}, raise_partition=1)
    run_dir = run_toy(tmp_path, scenario)
    # Replies from partitions 0, 2, 3: round 1 steps 1, 3, 4; round 2 steps 2, 4, 5.
    assert_final(run_dir, expected_model(tmp_path, [8 / 3, 11 / 3]))
    part = load_run(run_dir).participation
    assert part[part.failed].client.tolist() == [1, 1]
    assert part[part.client != 1].replied.all()
    assert [(r, c) for r, c, _ in failures(run_dir)] == [(1, 1), (2, 1)]
    assert all("RuntimeError: partition 1 refuses to train" in why for *_, why in failures(run_dir))


# The failure limits and the NaN check are the run loop's, whatever the engine: these run
# on the inline engine (a raising client on Ray is the first test's).
INLINE = {"kind": "inline", "num_actors": 1}


@pytest.mark.parametrize(
    ("key", "value"), [("max_failures_per_round", 0), ("max_failure_fraction", 0.2)]
)
def test_failure_limit_stops_the_run_with_results_so_far(
    tmp_path: Path, key: str, value: float
) -> None:
    scenario = toy_scenario(3, {**INLINE, key: value}, raise_partition=1)
    with pytest.raises(RunError) as caught:
        run_toy(tmp_path, scenario)
    message = str(caught.value)
    assert message.startswith(
        f"round 1: 1 of 4 clients failed, more than engine.{key} = {value:g} allows "
        "(client 1: RuntimeError: partition 1 refuses to train"
    )
    assert "\n" not in message
    run = load_run(tmp_path / "run")
    assert set(run.participation["round"]) == {1}
    assert [e["event"] for e in run.events] == ["client_failed", "run_stopped"]
    assert not (tmp_path / "run" / "final_model.npz").exists()


@pytest.mark.slow
def test_dead_actor_is_replaced_and_its_message_a_failure(
    tmp_path: Path, ray_session: None
) -> None:
    run_dir = run_toy(tmp_path, toy_scenario(3, die_partition=2, die_round=2))
    # Round 2 loses partition 2 (its Context keeps 1 call); round 3 has everyone again.
    assert_final(run_dir, expected_model(tmp_path, [2.5, 10 / 3, 17 / 4]))
    assert [(r, c) for r, c, _ in failures(run_dir)] == [(2, 2)]
    assert "actor died" in failures(run_dir)[0][2]
    part = load_run(run_dir).participation
    assert part.replied.sum() == 11


@pytest.mark.slow
def test_straggler_past_the_timeout_is_a_failure_without_a_hang(
    tmp_path: Path, ray_session: None
) -> None:
    # Two clients on two actors: nobody's message waits behind the straggler's.
    scenario = toy_scenario(
        2, {"timeout": 8.0}, num_clients=2, sleep_partition=0, sleep_round=1, sleep_s=120.0
    )
    started = time.monotonic()
    run_dir = run_toy(tmp_path, scenario)
    assert time.monotonic() - started < 100
    # Round 1: partition 1 alone (step 2); round 2: partition 0 has 0 calls (steps 1, 3).
    assert_final(run_dir, expected_model(tmp_path, [2.0, 2.0]))
    assert failures(run_dir) == [(1, 0, "no reply within engine.timeout (8 s)")]


def test_nan_update_stops_the_run_naming_round_and_client(tmp_path: Path) -> None:
    with pytest.raises(RunError) as caught:
        run_toy(tmp_path, toy_scenario(3, INLINE, nan_partition=3, nan_round=2))
    assert str(caught.value) == (
        "round 2: the aggregated model has NaN or inf values (non-finite updates from "
        "client 3); lower client.lr or the strategy's server learning rate"
    )
    events = load_run(tmp_path / "run").events
    assert events[-1]["event"] == "run_stopped" and events[-1]["round"] == 2


def test_divergence_without_a_bad_client_blames_the_server(flower_identity: None) -> None:
    instruction = Message(RecordDict(), node_id_of(0), "train")
    finite = ArrayRecord({"w": Array(np.ones(2, np.float32))})
    reply = Message(RecordDict({"arrays": finite}), reply_to=instruction)
    message = str(divergence_error(4, [reply], {node_id_of(0): 0}))
    assert "every client update was finite: the server update itself diverged" in message


# --- bad input on the command line: one line naming the file, exit code 2 -------------


def cli(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli_app, list(args))
    return result.exit_code, result.stderr.strip().splitlines()


def digits_scenario(**tables: dict) -> dict:
    scenario: dict = {
        "rounds": 2,
        "data": {"dataset": "digits", "num_clients": 4},
        "model": {"name": "logreg"},
    }
    scenario.update(tables)
    return scenario


def write(tmp_path: Path, name: str, content: str | bytes | dict) -> Path:
    path = tmp_path / name
    if isinstance(content, dict):
        path.write_text(tomli_w.dumps(content))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_bad_input_files_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    write(tmp_path, "trace.csv", "round,client\n1,seven\n")
    write(tmp_path, "edges.txt", "0 1\n1 banana\n")
    write(tmp_path, "broken.py", "def oops(:\n")
    cases = {
        "missing.toml": None,
        "syntax.toml": "rounds = = 3\n",
        "binary.toml": b"\xff\xfe\x00rounds",
        "trace.toml": digits_scenario(participation={"pattern": "trace", "trace": "trace.csv"}),
        "missing-trace.toml": digits_scenario(
            participation={"pattern": "trace", "trace": "nowhere.csv"}
        ),
        "topology.toml": digits_scenario(strategy={"name": "gossip", "topology_file": "edges.txt"}),
        "plugin.toml": digits_scenario(strategy={"name": "nowhere.py:Strategy"}),
        "broken-plugin.toml": digits_scenario(strategy={"name": "broken.py:Strategy"}),
        "app.toml": digits_scenario(client={"app": "broken.py:app"}),
    }
    for name, content in cases.items():
        path = tmp_path / name if content is None else write(tmp_path, name, content)
        code, lines = cli("run", str(path), "--out", str(tmp_path / f"out-{name}"))
        assert code == 2, (name, lines)
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), (name, lines)
        assert not (tmp_path / f"out-{name}").exists(), name  # nothing written


def test_resume_of_a_bad_results_directory_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = tmp_path / "done"
    done.mkdir()
    (done / "scenario.toml").write_text("rounds = 1\n")
    (done / "summary.json").write_text(json.dumps({"rounds": 1}))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "scenario.toml").write_text("rounds = 1\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scenario.toml").write_text("rounds = 1\n")
    (broken / "checkpoint.zip").write_bytes(b"not a zip archive")
    old = tmp_path / "old"
    old.mkdir()
    (old / "scenario.toml").write_text("rounds = 1\n")
    (old / "checkpoint.pkl").write_bytes(b"a pickle of an older fedsim")
    expected = {
        "nowhere": "no such run directory",
        "empty": "not a fedsim run directory (no scenario.toml)",
        "done": "the run is complete (summary.json); nothing to resume",
        "fresh": "no checkpoint.zip to resume from (the run stopped before its first "
        "checkpoint, see [checkpoint] every); start it again",
        "broken": "unreadable checkpoint",
        "old": "checkpoint.pkl: a checkpoint of an older fedsim, a pickle, which this fedsim "
        "never opens",
    }
    for name, problem in expected.items():
        code, lines = cli("resume", str(tmp_path / name))
        assert code == 2, (name, lines)
        assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / name}"), lines
        assert problem in lines[0], (name, lines)


def test_unreachable_ray_address_fails_fast_in_one_line(tmp_path: Path) -> None:
    for address, problem in {
        "127.0.0.1:1": "expected the address of a running Ray cluster (cannot connect",
        "nowhere": "expected host:port",
    }.items():
        scenario = digits_scenario(engine={"ray_address": address})
        path = write(tmp_path, "ray.toml", scenario)
        started = time.monotonic()
        with pytest.raises(FedsimError) as caught:
            loaded = load_scenario(path)
            check_ray_address(loaded.engine.ray_address, loaded.source)
        assert time.monotonic() - started < 5
        assert str(caught.value).startswith(f"{path}: engine.ray_address: ")
        assert problem in str(caught.value)
