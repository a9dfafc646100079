"""Scenario validation: every user mistake is one exact line naming file and key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from fedsim.config import load_scenario, parse_override
from fedsim.errors import ScenarioError

GOOD = """
name = "t"
seed = 3
rounds = 2
[data]
dataset = "digits"
num_clients = 4
[model]
name = "mlp"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path, overrides)
    return str(caught.value)


def test_good_scenario_defaults(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, GOOD))
    assert (scenario.name, scenario.seed, scenario.rounds) == ("t", 3, 2)
    assert scenario.data.partition == "iid" and scenario.data.test_fraction == 0.2
    assert scenario.client.local_epochs == 1 and scenario.client.local_steps is None
    assert scenario.strategy_name == "fedavg" and scenario.participation["pattern"] == "always"
    assert scenario.engine.kind == "ray" and scenario.evaluate.central is True
    assert scenario.base_dir == tmp_path


def with_change(tmp_path: Path, table: str, key: str, value: object) -> Path:
    raw = tomllib.loads(GOOD)
    (raw.setdefault(table, {}) if table else raw)[key] = value
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


@pytest.mark.parametrize(
    ("table", "key", "value", "message"),
    [
        (
            "",
            "colour",
            1,
            "colour: expected one of the known keys (checkpoint, client, data, engine, "
            "evaluate, log, model, name, participation, privacy, rounds, seed, strategy, "
            "sweep, system)",
        ),
        ("", "rounds", "ten", "rounds: expected an integer, got 'ten'"),
        ("", "rounds", 0, "rounds: expected an integer >= 1, got 0"),
        ("client", "lr", -1, "client.lr: expected a number > 0.0, got -1"),
        ("client", "batch_size", 0, "client.batch_size: expected an integer >= 1, got 0"),
        ("client", "momentum", 1.5, "client.momentum: expected a number in [0.0, 1.0), got 1.5"),
        (
            "engine",
            "kind",
            "spark",
            "engine.kind: expected one of ray, inline, flower, got 'spark'",
        ),
        ("evaluate", "every", True, "evaluate.every: expected an integer, got True"),
        (
            "data",
            "partition",
            "zipf",
            "data.partition: expected one of iid, dirichlet, shards, natural, got 'zipf'",
        ),
        (
            "engine",
            "cohort",
            "on",
            'engine.cohort: expected "auto", "off" or a number of clients >= 1, got \'on\'',
        ),
        (
            "engine",
            "cohort",
            0,
            'engine.cohort: expected "auto", "off" or a number of clients >= 1, got 0',
        ),
    ],
)
def test_bad_values(tmp_path: Path, table: str, key: str, value: object, message: str) -> None:
    path = with_change(tmp_path, table, key, value)
    assert error_of(path) == f"{path}: {message}"


def test_unknown_key_names_the_known_ones(tmp_path: Path) -> None:
    path = with_change(tmp_path, "engine", "num_actor", 2)
    assert error_of(path) == (
        f"{path}: engine.num_actor: expected one of the known keys "
        "(allow_unauthenticated_cluster, cohort, cohort_memory_mb, kind, max_failure_fraction, "
        "max_failures_per_round, num_actors, num_cpus_per_client, "
        "num_gpus_per_client, ray_address, server_device, timeout)"
    )


def test_steps_and_epochs_exclusive(tmp_path: Path) -> None:
    path = with_change(tmp_path, "client", "local_steps", 2)
    raw = tomllib.loads(path.read_text())
    raw["client"]["local_epochs"] = 1
    path.write_text(tomli_w.dumps(raw))
    assert error_of(path) == (
        f"{path}: client.local_steps: expected either local_steps or local_epochs, not both"
    )


def test_data_range_errors(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("num_clients = 4", "num_clients = 0"))
    assert error_of(path) == f"{path}: data.num_clients: expected an integer >= 1, got 0"
    path.write_text(GOOD.replace("num_clients = 4", "num_clients = 4\ntest_fraction = 1.0"))
    assert error_of(path) == f"{path}: data.test_fraction: expected a number in [0.0, 1.0), got 1.0"
    path.write_text(GOOD.replace('dataset = "digits"\n', ""))
    assert error_of(path).startswith(f"{path}: data.dataset: expected a dataset name")


def test_missing_file_and_bad_syntax(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert error_of(missing) == f"{missing}: (file): expected an existing scenario file"
    path = write(tmp_path, "rounds = = 2")
    assert error_of(path).startswith(f"{path}: (syntax): expected valid TOML")


def test_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    scenario = load_scenario(path, ["client.lr=0.5", "strategy.name=fedau", "strategy.cutoff=50"])
    assert scenario.client.lr == 0.5
    assert scenario.strategy == {"name": "fedau", "cutoff": 50}
    assert scenario.raw["client"]["lr"] == 0.5
    assert parse_override("data.partition=dirichlet") == ("data.partition", "dirichlet")
    with pytest.raises(ScenarioError, match="--set: nonsense: expected key=value"):
        parse_override("nonsense")
    assert error_of(path, ["seed.x=1"]) == f"{path}: seed: expected a table, got 3"
