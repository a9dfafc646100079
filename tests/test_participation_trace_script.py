"""Recorded traces (CSV and parquet; cycling, stopping, failing at the end) and
scenario scripts, both loaded from real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim.errors import RunError, ScenarioError
from fedsim.participation import build_pattern
from fedsim.participation.matrix import participation_matrix
from fedsim.seeding import rng

TRACE = pd.DataFrame({"round": [1, 1, 2, 3, 3, 3], "client": [0, 3, 1, 0, 2, 2]})


def build(options: dict, base_dir: Path, num_clients: int = 4, seed: int = 0):
    return build_pattern(
        options,
        num_clients=num_clients,
        seed=seed,
        label_distribution=None,
        source="s.toml",
        base_dir=base_dir,
    )


def error_of(options: dict, base_dir: Path, num_clients: int = 4) -> str:
    with pytest.raises(ScenarioError) as error:
        build(options, base_dir, num_clients).reachable(1)
    return str(error.value)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_trace_replays_and_cycles(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    TRACE.to_csv(path, index=False) if suffix == ".csv" else TRACE.to_parquet(path)
    pattern = build({"pattern": "trace", "trace": path.name}, tmp_path)
    answers = [pattern.reachable(r).tolist() for r in range(1, 8)]
    assert answers == [[0, 3], [1], [0, 2], [0, 3], [1], [0, 2], [0, 3]]
    np.testing.assert_allclose(pattern.probabilities, [2 / 3, 1 / 3, 1 / 3, 1 / 3])


def test_trace_stop_and_error_at_the_end(tmp_path):
    TRACE.to_csv(tmp_path / "t.csv", index=False)
    stop = build({"pattern": "trace", "trace": "t.csv", "trace_end": "stop"}, tmp_path)
    assert stop.reachable(3).tolist() == [0, 2] and stop.reachable(4).tolist() == []
    fail = build({"pattern": "trace", "trace": "t.csv", "trace_end": "error"}, tmp_path)
    with pytest.raises(RunError) as error:
        fail.reachable(4)
    assert str(error.value) == (
        'participation.trace: t.csv ends at round 3, round 4 was asked (trace_end = "error")'
    )


def test_trace_available_column_and_empty_rounds(tmp_path):
    frame = pd.DataFrame(
        {"round": [1, 1, 2, 4], "client": [0, 1, 1, 2], "available": [True, False, True, False]}
    )
    frame.to_csv(tmp_path / "t.csv", index=False)
    pattern = build({"pattern": "trace", "trace": str(tmp_path / "t.csv")}, Path("/"))
    # Round 4 holds only an unavailable row: it still makes the trace 4 rounds long.
    assert [pattern.reachable(r).tolist() for r in range(1, 6)] == [[0], [1], [], [], [0]]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            pd.DataFrame({"round": [1, 2], "client": [0, 7]}),
            "client ids in [0, 4) in t.csv (unknown clients), got [7]",
        ),
        (
            pd.DataFrame({"round": [0, 2], "client": [0, 1]}),
            "rounds >= 1 in t.csv (rounds start at 1), got 0",
        ),
        (
            pd.DataFrame({"round": [1, 2], "node": [0, 1]}),
            "a trace with columns round and client (t.csv has: round, node), got 't.csv'",
        ),
        (
            pd.DataFrame({"round": [1, 2], "client": [0.5, 1]}),
            "integers in column client of t.csv, got 't.csv'",
        ),
        (
            pd.DataFrame({"round": [1], "client": [0], "available": [2]}),
            "true/false or 0/1 in column available of t.csv, got 't.csv'",
        ),
        (
            pd.DataFrame({"round": [1], "client": [0], "available": [0]}),
            "a trace with at least one reachable client (t.csv has none), got 't.csv'",
        ),
    ],
)
def test_bad_traces(tmp_path, frame, expected):
    frame.to_csv(tmp_path / "t.csv", index=False)
    message = error_of({"pattern": "trace", "trace": "t.csv"}, tmp_path)
    assert message == f"s.toml: participation.trace: expected {expected}"


def test_missing_or_unsupported_trace_files(tmp_path):
    assert error_of({"pattern": "trace", "trace": "none.csv"}, tmp_path) == (
        "s.toml: participation.trace: expected an existing trace file "
        f"({tmp_path / 'none.csv'} does not exist), got 'none.csv'"
    )
    assert error_of({"pattern": "trace", "trace": "t.json"}, tmp_path) == (
        "s.toml: participation.trace: expected a .csv or .parquet trace file, got 't.json'"
    )
    assert error_of({"pattern": "trace"}, tmp_path) == (
        "s.toml: participation.trace: expected a string (this key is required)"
    )


SCRIPT = '''
import numpy as np


def outage(round, clients, rng, first=50, last=80):
    """Clients 0-9 vanish between rounds first and last; the rest are up 90% of the time."""
    up = rng.random(len(clients)) < 0.9
    if first <= round <= last:
        up[:10] = False
    return up


def ids(round, clients, rng):
    return [c for c in clients if c % round == 0]


def bad_ids(round, clients, rng):
    return [0, 99]


def bad_type(round, clients, rng):
    return "everyone"


def two_args(round, clients):
    return clients


NOT_A_FUNCTION = 3
'''


@pytest.fixture
def script_dir(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "avail.py").write_text(SCRIPT)
    return tmp_path


def test_script_outage(script_dir):
    pattern = build(
        {"pattern": "script", "script": "scripts/avail.py:outage", "script_args": {"first": 5}},
        script_dir,
        num_clients=30,
        seed=3,
    )
    matrix = participation_matrix(pattern, 100)
    assert not matrix[:10, 4:80].any()
    assert matrix[:10, :4].any() and matrix[:10, 80:].any()
    expected = rng(3, "participation.script", 90).random(30) < 0.9
    np.testing.assert_array_equal(pattern.reachable(90), np.flatnonzero(expected))
    assert pattern.probabilities is None
    np.testing.assert_array_equal(participation_matrix(pattern, 100), matrix)  # asked again


def test_script_returning_ids(script_dir):
    pattern = build({"pattern": "script", "script": "scripts/avail.py:ids"}, script_dir, 10)
    assert pattern.reachable(3).tolist() == [0, 3, 6, 9]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "scripts/none.py:outage",
            "an existing file ({dir}/scripts/none.py does not exist), got 'scripts/none.py:outage'",
        ),
        (
            "scripts/avail.py:missing",
            "avail.py to define 'missing', got 'scripts/avail.py:missing'",
        ),
        ("scripts/avail.py:NOT_A_FUNCTION", "a function (round, clients, rng), got 'int'"),
        ("outage", "\"path/to/file.py:name\", got 'outage'"),
        (
            "scripts/avail.py:two_args",
            "a function taking (round, clients, rng) (too many positional arguments), "
            "got 'scripts/avail.py:two_args'",
        ),
        (
            "scripts/avail.py:bad_ids",
            "scripts/avail.py:bad_ids to return client ids in [0, 4) or a boolean mask of "
            "4 clients (round 1), got [99]",
        ),
        (
            "scripts/avail.py:bad_type",
            "scripts/avail.py:bad_type to return client ids in [0, 4) or a boolean mask of "
            "4 clients (round 1), got 'str of shape () and dtype <U8'",
        ),
    ],
)
def test_script_errors(script_dir, spec, expected):
    expected = expected.replace("{dir}", str(script_dir.resolve()))
    message = error_of({"pattern": "script", "script": spec}, script_dir)
    assert message == f"s.toml: participation.script: expected {expected}"


def test_script_args_must_fit_the_function(script_dir):
    message = error_of(
        {"pattern": "script", "script": "scripts/avail.py:ids", "script_args": {"x": 1}},
        script_dir,
    )
    assert message == (
        "s.toml: participation.script: expected a function taking (round, clients, rng, x) "
        "(got an unexpected keyword argument 'x'), got 'scripts/avail.py:ids'"
    )
