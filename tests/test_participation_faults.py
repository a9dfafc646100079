"""In-round faults: dropout after selection, stragglers past the deadline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fedsim.participation import build_faults
from fedsim.participation.faults import Faults, LatencyModel
from fedsim.seeding import rng


def faults(options: dict, num_clients: int = 4, seed: int = 0) -> Faults | None:
    return build_faults(
        {"pattern": "always", **options},
        num_clients=num_clients,
        seed=seed,
        source="s.toml",
        base_dir=Path("."),
    )


def test_no_fault_keys_means_no_faults():
    assert faults({}) is None
    assert faults({"dropout": 0.0}) is None


def test_dropout_rate_per_client():
    dropout = np.linspace(0, 0.9, 10)
    model = faults({"dropout": dropout.tolist()}, num_clients=10)
    assert model is not None
    rounds = 4000
    dropped = np.array([model.outcome(r, np.arange(10)).dropped for r in range(1, rounds + 1)])
    rate = dropped.mean(axis=0)
    assert rate[0] == 0.0
    assert (np.abs(rate - dropout) <= 5 * np.sqrt(dropout * (1 - dropout) / rounds)).all()


def test_dropout_is_the_rounds_uniform_of_each_client():
    model = faults({"dropout": 0.5}, num_clients=6, seed=3)
    assert model is not None
    out = model.outcome(7, np.array([5, 0, 2]))
    u = rng(3, "participation.dropout", 7).random(6)
    np.testing.assert_array_equal(out.dropped, u[[5, 0, 2]] < 0.5)
    np.testing.assert_array_equal(out.replied, ~out.dropped)
    assert np.isnan(out.latency).all() and not out.late.any()


def test_fate_depends_only_on_seed_client_and_round():
    model = faults(
        {
            "dropout": 0.3,
            "latency": {"distribution": "exponential", "params": {"mean": 1.0}},
            "deadline": 1.0,
        },
        num_clients=20,
        seed=1,
    )
    assert model is not None
    for r in (1, 9, 33):
        alone = model.outcome(r, np.array([7]))
        crowd = model.outcome(r, np.array([19, 7, 0, 3]))
        assert alone.dropped[0] == crowd.dropped[1] and alone.late[0] == crowd.late[1]
        np.testing.assert_equal(alone.latency[0], crowd.latency[1])


def test_late_when_latency_exceeds_the_deadline():
    model = faults(
        {
            "latency": {"distribution": "constant", "params": {"value": [1.0, 5.0, 10.0, 0.0]}},
            "deadline": 5.0,
        }
    )
    assert model is not None
    out = model.outcome(1, np.array([2, 1, 0]))
    assert out.late.tolist() == [True, False, False]
    assert out.replied.tolist() == [False, True, True]
    assert out.latency.tolist() == [10.0, 5.0, 1.0]
    assert out.selected.tolist() == [2, 1, 0]


def test_lognormal_stragglers_fraction_late():
    model = faults(
        {
            "latency": {"distribution": "lognormal", "params": {"median": 1.0, "sigma": 0.5}},
            "deadline": 2.0,
        },
        num_clients=200,
        seed=4,
    )
    assert model is not None
    z = rng(4, "participation.latency", 3).standard_normal(200)
    np.testing.assert_allclose(model.outcome(3, np.arange(200)).latency, np.exp(0.5 * z))
    late = np.mean([model.outcome(r, np.arange(200)).late.mean() for r in range(1, 101)])
    expected = 0.5 * math.erfc(math.log(2.0) / 0.5 / math.sqrt(2))  # P(exp(0.5 Z) > 2)
    assert abs(late - expected) <= 5 * math.sqrt(expected * (1 - expected) / 20_000)


def test_per_client_uniform_latency_and_no_deadline():
    model = faults(
        {"latency": {"distribution": "uniform", "params": {"low": [0, 10], "high": [1, 10]}}},
        num_clients=2,
    )
    assert model is not None
    latency = np.array([model.outcome(r, np.array([0, 1])).latency for r in range(1, 201)])
    assert (latency[:, 0] >= 0).all() and (latency[:, 0] < 1).all()
    assert (latency[:, 1] == 10).all()
    assert not any(model.outcome(r, np.array([0, 1])).late.any() for r in range(1, 20))


def test_dropped_clients_have_no_latency_and_are_not_late():
    model = Faults(
        2,
        seed=0,
        dropout=np.array([1.0, 0.0]),
        latency=LatencyModel("constant", {"value": np.array([9.0, 9.0])}),
        deadline=1.0,
    )
    out = model.outcome(1, np.array([0, 1]))
    assert out.dropped.tolist() == [True, False] and out.late.tolist() == [False, True]
    assert np.isnan(out.latency[0]) and out.latency[1] == 9.0
    assert not out.replied.any()


def test_selected_must_be_known_clients():
    model = Faults(2, seed=0, dropout=np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"selected must be client ids in \[0, 2\)"):
        model.outcome(1, np.array([2]))
