"""`fedsim participation`: the matrix a run will see, drawn and tabulated without training.

Most cases run the typer app in-process (``CliRunner``); one subprocess checks
that a bad pattern parameter ends a real ``fedsim run`` process with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsim.analysis import participation_rates
from fedsim.cli import app
from fedsim.config import load_scenario
from fedsim.participation import build_pattern
from fedsim.participation.matrix import participation_matrix
from fedsim.simulation.setup import build_run, client_label_distribution
from tests.helpers import digits_scenario, run_cli, write_scenario

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scenario_with(participation: dict[str, Any], num_clients: int = 6, **changes: Any) -> dict:
    scenario = digits_scenario(participation=participation, **changes)
    scenario["data"].update(num_clients=num_clients, partition="dirichlet", alpha=0.5)
    return scenario


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def pattern_of(path: Path) -> Any:
    loaded = load_scenario(path)
    return build_pattern(
        loaded.participation,
        num_clients=loaded.data.num_clients,
        seed=loaded.seed,
        label_distribution=client_label_distribution(loaded),
        source=loaded.source,
        base_dir=loaded.base_dir,
    )


def test_label_distribution_is_the_one_a_run_uses(tmp_path: Path) -> None:
    """Label-based p_n from the in-memory partition equal those build_run() gives the run,
    including when a strategy's proxy set is carved from the training data first."""
    rates = {"pattern": "bernoulli", "p_mean": 0.3}
    plain = write_scenario(tmp_path, scenario_with(rates), "plain.toml")
    proxy = scenario_with(rates, strategy={"name": "fedlaw", "proxy_source": "train"})
    carved = write_scenario(tmp_path, proxy, "carved.toml")
    distributions: dict[str, np.ndarray] = {}
    for name, path in (("plain", plain), ("carved", carved)):
        loaded = load_scenario(path)
        distribution = client_label_distribution(loaded)
        assert distribution is not None
        distributions[name] = distribution
        prepared = build_run(loaded, tmp_path / name)
        np.testing.assert_array_equal(
            pattern_of(path).probabilities, prepared.pattern.probabilities
        )
        assert prepared.store is not None
        counts = np.asarray(prepared.store.label_counts(), dtype=float)
        np.testing.assert_allclose(distributions[name] * counts.sum(1, keepdims=True), counts)
    assert not np.array_equal(distributions["plain"], distributions["carved"])


def test_report_and_files_for_many_clients(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_scenario(tmp_path, scenario_with({"pattern": "markov", "a": 0.2}, 30))
    result = invoke(
        "participation", str(path), "--rounds", "40", "--out", "fig/m.png", "--csv", "t.csv"
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fig/m.png").read_bytes()[:8] == PNG_MAGIC
    pattern = pattern_of(path)
    expected = participation_rates(participation_matrix(pattern, 40), pattern.probabilities)
    table = pd.read_csv(tmp_path / "t.csv")
    assert list(table.columns) == ["client", "p_n", "rate", "rounds", "longest_gap"]
    pd.testing.assert_frame_equal(table, expected, rtol=1e-5)
    lines = result.stdout.splitlines()
    assert lines[0] == "e2e: markov, 30 clients x 40 rounds, seed 4"
    error = (expected.rate - expected.p_n).abs()
    assert lines[2].startswith(f"|rate - p_n|: mean {error.mean():.4f}, max {error.max():.4f}")
    assert [line.split()[0] for line in lines[4:8]] == ["mean", "min", "median", "max"]
    assert "  ... 20 more clients (--csv FILE writes every row)" in lines
    shown = [line.split() for line in lines[9:]]
    clients = [int(row[0]) for row in shown if row[0].isdigit()]
    assert clients == [0, 1, 2, 3, 4, 25, 26, 27, 28, 29]
    last = [f"{expected.at[29, c]:.4f}" for c in ("p_n", "rate")]
    last += [str(expected.at[29, c]) for c in ("rounds", "longest_gap")]
    assert shown[-3] == ["29", *last]
    assert result.stdout.rstrip().endswith("heatmap: fig/m.png\ntable: t.csv")
    assert not (tmp_path / "runs").exists() and not list(tmp_path.rglob("client_data"))


def test_trace_prints_every_client_with_hand_counted_rates(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text("round,client\n1,0\n1,1\n1,2\n2,0\n2,3\n3,0\n3,4\n4,0\n4,1\n")
    path = write_scenario(tmp_path, scenario_with({"pattern": "trace", "trace": "t.csv"}))
    result = invoke("participation", str(path), "--rounds", "4")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e2e-participation.png").read_bytes()[:8] == PNG_MAGIC
    lines = result.stdout.splitlines()
    assert (
        lines[1] == "reachable per round: mean 2.2, min 2, max 3 (before the strategy's sampling)"
    )
    rows = [line.split() for line in lines[4:10]]
    # client, p_n (the trace's own rate), rate, rounds, longest run of rounds away
    assert rows == [
        ["0", "1.0000", "1.0000", "4", "0"],
        ["1", "0.5000", "0.5000", "2", "2"],
        ["2", "0.2500", "0.2500", "1", "3"],
        ["3", "0.2500", "0.2500", "1", "2"],
        ["4", "0.2500", "0.2500", "1", "2"],
        ["5", "0.0000", "0.0000", "0", "4"],
    ]


def test_script_has_no_p_n_and_faults_are_noted(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd.py").write_text("def odd(round, clients, rng):\n    return clients % 2 == 1\n")
    participation = {"pattern": "script", "script": "odd.py:odd", "dropout": 0.5}
    path = write_scenario(tmp_path, scenario_with(participation))
    result = invoke("participation", str(path), "--set", "rounds=2", "--out", "o.png")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "e2e: script, 6 clients x 2 rounds, seed 4"
    assert lines[1].endswith("(before the strategy's sampling and in-round faults)")
    assert lines[2] == "p_n: not defined by this pattern"
    client_0, client_1 = (line.split() for line in lines[4:6])
    assert client_0 == ["0", "-", "0.0000", "0", "2"]
    assert client_1 == ["1", "-", "1.0000", "2", "0"]


BAD_PATTERNS: dict[str, tuple[dict[str, Any], str]] = {
    "probability": (
        {"pattern": "bernoulli", "rates": 1.5},
        "participation.rates: expected a number in [0, 1], got 1.5",
    ),
    "markov-a": (
        {"pattern": "markov", "a": -0.1},
        "participation.a: expected a number in [0, 1], got -0.1",
    ),
    "period": (
        {"pattern": "cyclic", "period": 0},
        "participation.period: expected an integer >= 1, got 0",
    ),
    "trace": (
        {"pattern": "trace", "trace": "t.csv"},
        "participation.trace: expected client ids in [0, 6) in t.csv (unknown clients), got [7, 9]",
    ),
    "script": (
        {"pattern": "script", "script": "nope.py:f"},
        "participation.script: expected an existing file ({dir}/nope.py does not exist), "
        "got 'nope.py:f'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PATTERNS))
def test_bad_pattern_parameters_are_one_line_errors(case: str, tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("round,client\n1,0\n1,7\n2,9\n")
    participation, message = BAD_PATTERNS[case]
    path = write_scenario(tmp_path, scenario_with(participation))
    expected = f"error: {path}: {message.format(dir=tmp_path)}\n"
    for command in (
        ["participation", str(path)],
        ["run", str(path), "--out", str(tmp_path / "run")],
    ):
        result = invoke(*command)
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
        assert result.stderr == expected
        assert result.stdout == ""


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, scenario_with({"pattern": "always"}))
    for options, message in (
        (["--rounds", "0"], "--rounds: expected an integer >= 1, got 0"),
        (["--out", "fig.jpg"], "--out: expected a .png file, got 'fig.jpg'"),
        (["--set", "rounds"], "--set: rounds: expected key=value with a dotted key"),
    ):
        result = invoke("participation", str(path), *options)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1
    missing = invoke("participation", str(tmp_path / "nope.toml"))
    assert missing.exit_code == 2 and "expected an existing scenario file" in missing.stderr


def test_a_real_process_ends_with_one_line(tmp_path: Path) -> None:
    participation, message = BAD_PATTERNS["script"]
    path = write_scenario(tmp_path, scenario_with(participation))
    done = run_cli("run", str(path), "--out", "run", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"error: {path}: {message.format(dir=tmp_path)}\n"
    assert done.stdout == ""
