"""Every bad ``[participation]`` value stops with one exact line naming file and key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.errors import ScenarioError
from fedsim.participation import build_faults, build_pattern

PATTERN_CASES = [
    (
        {"pattern": "poisson"},
        "pattern: expected one of always, uniform, bernoulli, markov, cyclic, diurnal, trace, "
        "script, got 'poisson'",
    ),
    ({"pattern": 3}, "pattern: expected a string, got 3"),
    (
        {"pattern": "bernoulli", "period": 5},
        'period: expected one of the keys of pattern "bernoulli" (deadline, dropout, latency, '
        "p_alpha, p_mean, p_min, pattern, rates)",
    ),
    (
        {"pattern": "always", "clients_per_round": 2},
        'clients_per_round: expected one of the keys of pattern "always" (deadline, dropout, '
        "latency, pattern)",
    ),
    ({"pattern": "uniform"}, "clients_per_round: expected an integer (this key is required)"),
    (
        {"pattern": "uniform", "clients_per_round": 11},
        "clients_per_round: expected an integer in [1, 10] (the number of clients), got 11",
    ),
    (
        {"pattern": "uniform", "clients_per_round": 0},
        "clients_per_round: expected an integer >= 1, got 0",
    ),
    (
        {"pattern": "uniform", "clients_per_round": 2.5},
        "clients_per_round: expected an integer, got 2.5",
    ),
    ({"pattern": "markov", "rates": 0.1, "a": 1.5}, "a: expected a number in [0, 1], got 1.5"),
    ({"pattern": "markov", "rates": 0.1, "a": -0.1}, "a: expected a number in [0, 1], got -0.1"),
    ({"pattern": "markov", "rates": 0.1, "a": "0.1"}, "a: expected a number, got '0.1'"),
    ({"pattern": "cyclic", "rates": 0.1, "period": 0}, "period: expected an integer >= 1, got 0"),
    ({"pattern": "cyclic", "rates": 0.1, "period": 1.5}, "period: expected an integer, got 1.5"),
    ({"pattern": "diurnal", "rates": 0.1, "period": 0}, "period: expected a number > 0, got 0"),
    (
        {"pattern": "diurnal", "rates": 0.1, "amplitude": 2},
        "amplitude: expected a number in [0, 1], got 2",
    ),
    (
        {"pattern": "diurnal", "rates": 0.1, "phase_spread": -1},
        "phase_spread: expected a number in [0, 1], got -1",
    ),
    ({"pattern": "bernoulli", "rates": 1.5}, "rates: expected a number in [0, 1], got 1.5"),
    (
        {"pattern": "bernoulli", "rates": [0.1] * 9 + [-0.2]},
        "rates: expected a number in [0, 1] in every entry, got -0.2",
    ),
    (
        {"pattern": "bernoulli", "rates": [0.1, 0.2]},
        "rates: expected a list of 10 numbers (one per client), got [0.1, 0.2]",
    ),
    (
        {"pattern": "bernoulli", "rates": True},
        'rates: expected "labels", a rate, a list of one rate per client, a file path '
        "(.csv, .npy, .txt) or a table {distribution = ...}, got True",
    ),
    (
        {"pattern": "bernoulli", "rates": 0.2, "p_min": 0.1},
        'p_min: expected no value unless rates = "labels", got 0.1',
    ),
    (
        {"pattern": "bernoulli", "p_min": 1.2},
        "p_min: expected a number in [0, 1], got 1.2",
    ),
    ({"pattern": "bernoulli", "p_mean": 0}, "p_mean: expected a number > 0, got 0"),
    ({"pattern": "bernoulli", "p_alpha": -1}, "p_alpha: expected a number > 0, got -1"),
    (
        {"pattern": "bernoulli", "rates": {"distribution": "gamma"}},
        "rates.distribution: expected one of uniform, constant, lognormal, got 'gamma'",
    ),
    (
        {"pattern": "bernoulli", "rates": {"low": 0.1}},
        "rates.distribution: expected a string (this key is required)",
    ),
    (
        {"pattern": "bernoulli", "rates": {"distribution": "uniform", "low": 0.5, "high": 0.2}},
        "rates.high: expected a number in [0.5, 1] (>= low), got 0.2",
    ),
    (
        {"pattern": "bernoulli", "rates": {"distribution": "uniform", "mean": 0.5}},
        "rates.mean: expected one of the keys of rates distribution uniform "
        "(distribution, high, low)",
    ),
    (
        {"pattern": "bernoulli", "rates": {"distribution": "constant"}},
        "rates.value: expected a number (this key is required)",
    ),
    (
        {"pattern": "bernoulli", "rates": {"distribution": "lognormal", "beta": 1}},
        "rates.beta: expected a number in [0, 1), got 1",
    ),
    (
        {"pattern": "bernoulli", "rates": {"distribution": "lognormal", "scale": 0}},
        "rates.scale: expected a number in (0, 1], got 0",
    ),
    (
        {"pattern": "trace", "trace": "t.csv", "trace_end": "loop"},
        "trace_end: expected one of cycle, stop, error, got 'loop'",
    ),
    ({"pattern": "script"}, 'script: expected "path/to/file.py:function" (this key is required)'),
    ({"pattern": "script", "script": 3}, 'script: expected "path/to/file.py:function", got 3'),
    (
        {"pattern": "script", "script": "a.py:f", "script_args": 3},
        "script_args: expected a table, got 3",
    ),
]


@pytest.mark.parametrize(("options", "expected"), PATTERN_CASES)
def test_bad_pattern_options(options, expected):
    with pytest.raises(ScenarioError) as error:
        build_pattern(
            options,
            num_clients=10,
            seed=0,
            label_distribution=np.full((10, 2), 0.5),
            source="s.toml",
            base_dir=Path("."),
        )
    assert str(error.value) == f"s.toml: participation.{expected}"


def test_label_rates_need_the_label_mix():
    with pytest.raises(ScenarioError) as error:
        build_pattern(
            {"pattern": "markov"},
            num_clients=3,
            seed=0,
            label_distribution=None,
            source="s.toml",
            base_dir=Path("."),
        )
    assert str(error.value) == (
        "s.toml: participation.rates: expected explicit rates (the clients' label mix is "
        "unknown here, e.g. with a user client.app), got 'labels'"
    )


def test_label_mix_must_have_a_row_per_client():
    with pytest.raises(ScenarioError) as error:
        build_pattern(
            {"pattern": "bernoulli"},
            num_clients=3,
            seed=0,
            label_distribution=np.ones((4, 2)),
            source="s.toml",
            base_dir=Path("."),
        )
    assert str(error.value) == (
        "s.toml: participation.rates: expected a label distribution of 3 clients × classes, "
        "got 'array of shape (4, 2)'"
    )


FAULT_CASES = [
    ({"dropout": 1.5}, "dropout: expected a number in [0, 1], got 1.5"),
    (
        {"dropout": [0.1, 0.2]},
        "dropout: expected a list of 3 numbers (one per client), got [0.1, 0.2]",
    ),
    ({"dropout": "high"}, "dropout: expected a number, got 'high'"),
    (
        {"deadline": 2.0},
        "deadline: expected a latency table too (late means latency > deadline), got 2.0",
    ),
    (
        {"latency": {"distribution": "constant", "params": {"value": 1}}, "deadline": 0},
        "deadline: expected a number > 0, got 0",
    ),
    ({"latency": 3}, "latency: expected a table, got 3"),
    (
        {"latency": {"distribution": "pareto"}},
        "latency.distribution: expected one of constant, uniform, exponential, lognormal, "
        "got 'pareto'",
    ),
    (
        {"latency": {"distribution": "lognormal", "params": {"median": 1.0}}},
        "latency.params.sigma: expected a number or a list of one number per client (required)",
    ),
    (
        {"latency": {"distribution": "lognormal", "params": {"median": 0, "sigma": 1}}},
        "latency.params.median: expected a number > 0, got 0",
    ),
    (
        {"latency": {"distribution": "exponential", "params": {"mean": 1, "scale": 2}}},
        "latency.params.scale: expected one of the keys of latency distribution exponential (mean)",
    ),
    (
        {"latency": {"distribution": "uniform", "params": {"low": [1, 1, 1], "high": [2, 0.5, 2]}}},
        "latency.params.high: expected numbers >= low, got [2, 0.5, 2]",
    ),
    (
        {"latency": {"distribution": "constant", "params": {"value": [1, -1, 1]}}},
        "latency.params.value: expected a number >= 0 in every entry, got -1",
    ),
    (
        {"latency": {"distribution": "constant", "value": 1}},
        "latency.value: expected one of the keys of latency (distribution, params)",
    ),
]


@pytest.mark.parametrize(("options", "expected"), FAULT_CASES)
def test_bad_fault_options(options, expected):
    with pytest.raises(ScenarioError) as error:
        build_faults(
            {"pattern": "always", **options},
            num_clients=3,
            seed=0,
            source="s.toml",
            base_dir=Path("."),
        )
    assert str(error.value) == f"s.toml: participation.{expected}"


def test_fault_keys_pass_pattern_checks_and_pattern_keys_pass_fault_checks():
    options = {"pattern": "cyclic", "rates": 0.2, "period": 4, "dropout": 0.1}
    build_pattern(
        options,
        num_clients=3,
        seed=0,
        label_distribution=None,
        source="s.toml",
        base_dir=Path("."),
    )
    assert build_faults(options, num_clients=3, seed=0, source="s.toml", base_dir=Path("."))
