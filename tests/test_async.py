"""FedBuff and FedAsync driven by the virtual clock (issue 18): the math on hand-computed
numbers, whole runs against a hand-computed sequence of arrivals, seeding, and kill
and resume in the middle of an asynchronous run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fedsim import keys
from fedsim.analysis import load_run
from fedsim.config import load_scenario, scenario_from_dict
from fedsim.errors import ScenarioError
from fedsim.simulation import resume_run, run_scenario, validate
from fedsim.simulation.checkpoint import load_checkpoint
from fedsim.strategies.asynchronous import staleness_weight
from fedsim.strategies.fedasync import FedAsync, fedasync_update
from fedsim.strategies.fedbuff import FedBuff, fedbuff_update
from tests.helpers import (
    Crash,
    assert_same_results,
    crash_after,
    initial_weights,
    run_toy,
    toy_scenario,
    write_scenario,
)
from tests.test_system_time import timed_scenario


def test_staleness_weights() -> None:
    assert staleness_weight(0) == 1.0 and staleness_weight(3) == 0.5
    assert staleness_weight(8, "polynomial", 1.0) == pytest.approx(1 / 9)
    assert staleness_weight(4, "hinge", 2.0, 4) == 1.0
    assert staleness_weight(5, "hinge", 2.0, 4) == pytest.approx(1 / 3)
    assert staleness_weight(100, "constant") == 1.0


def test_fedbuff_buffers_k_staleness_weighted_updates() -> None:
    x = {"w": np.array([1.0, 2.0])}
    strategy = FedBuff(buffer_size=2, server_lr=2.0)
    base = {"w": np.array([0.0, 0.0])}
    assert strategy.receive(x, {"w": np.array([1.0, 1.0])}, base, 0, 1) is None
    new = strategy.receive(x, {"w": np.array([2.0, 0.0])}, base, 3, 1)
    # x + 2 * (1/2) * (1 * [1, 1] + 0.5 * [2, 0]) = x + [2, 1]
    assert new is not None and new["w"].tolist() == [3.0, 3.0]
    assert strategy.buffer == []
    assert fedbuff_update(x, [(1.0, {"w": np.array([4.0, 0.0])})], 0.5)["w"].tolist() == [3, 2]


def test_fedasync_mixes_every_arrival_with_staleness() -> None:
    x = {"w": np.array([0.0])}
    strategy = FedAsync(mixing=0.5)
    assert strategy.receive(x, {"w": np.array([8.0])}, x, 0, 1)["w"].tolist() == [4.0]
    assert strategy.receive(x, {"w": np.array([8.0])}, x, 3, 1)["w"].tolist() == [2.0]
    assert fedasync_update(x, {"w": np.array([2.0])}, 1.0)["w"].tolist() == [2.0]


def async_scenario(tmp_path: Path, strategy: dict, rounds: int) -> dict:
    """The two toy clients of tests/test_system_time.py: client 0's replies arrive
    4.5 s after it is asked, client 1's 16 s."""
    scenario = timed_scenario(tmp_path)
    scenario["rounds"] = rounds
    scenario["strategy"] = {"concurrency": 2, **strategy}
    return scenario


def final(run_dir: Path) -> dict[str, np.ndarray]:
    loaded = np.load(run_dir / "final_model.npz")
    return {name: loaded[name] for name in loaded.files}


def staleness_rows(run_dir: Path) -> list[tuple[int, int, float]]:
    m = load_run(run_dir).metrics
    rows = m[(m.phase == keys.PHASE_SERVER) & (m.metric == "staleness")]
    return list(zip(rows["round"], rows["client"], rows["value"], strict=True))


def server_ends(run_dir: Path) -> list[float]:
    m = load_run(run_dir).metrics
    return m[(m.phase == keys.PHASE_SYSTEM) & (m.metric == keys.ROUND_END_S)].value.tolist()


def test_fedbuff_run_equals_the_hand_computed_sequence(tmp_path: Path) -> None:
    """t=0: both asked on x0. 4.5 s: client 0 (τ=0, Δ = 1 − x0/2), asked again on x0.
    9 s: client 0 (τ=0, Δ = 2 − x0/2): K=2, x1 = x0 + (Δ + Δ')/2; asked on x1.
    13.5 s: client 0 (τ=0, Δ = 3 − x1/2); asked again. 16 s: client 1, trained on x0
    (τ=1, Δ = 2 − x0/2, weight 1/√2): x2 = x1 + (3 − x1/2 + (2 − x0/2)/√2)/2."""
    scenario = async_scenario(tmp_path, {"name": "fedbuff", "buffer_size": 2}, rounds=2)
    run_dir = run_toy(tmp_path, scenario)
    x0 = {k: v.astype(np.float64) for k, v in initial_weights(tmp_path).items()}
    for name, w0 in x0.items():
        w1 = w0 + ((1 - w0 / 2) + (2 - w0 / 2)) / 2
        w2 = w1 + ((3 - w1 / 2) + (2 - w0 / 2) / math.sqrt(2)) / 2
        np.testing.assert_allclose(final(run_dir)[name], w2, rtol=1e-6)
    assert server_ends(run_dir) == pytest.approx([9.0, 16.0])
    assert staleness_rows(run_dir) == [(1, 0, 0.0), (1, 0, 0.0), (2, 0, 0.0), (2, 1, 1.0)]
    part = load_run(run_dir).participation
    assert part[part.replied].groupby("round").client.apply(list).to_dict() == {
        1: [0],
        2: [0, 1],
    }


def test_fedasync_run_equals_the_hand_computed_sequence(tmp_path: Path) -> None:
    """Every arrival is an update: client 0 at 4.5, 9, 13.5 s (τ=0, α=0.5), then client 1
    at 16 s with the model it got at t=0 (τ=3, α = 0.5/√4 = 0.25)."""
    scenario = async_scenario(tmp_path, {"name": "fedasync", "mixing": 0.5}, rounds=4)
    run_dir = run_toy(tmp_path, scenario)
    for name, w0 in initial_weights(tmp_path).items():
        w = w0.astype(np.float64)
        w1 = 0.75 * w + 0.5
        w2 = 0.75 * w1 + 1.0
        w3 = 0.75 * w2 + 1.5
        w4 = 0.75 * w3 + 0.25 * (0.5 * w + 2)
        np.testing.assert_allclose(final(run_dir)[name], w4, rtol=1e-6)
    assert server_ends(run_dir) == pytest.approx([4.5, 9.0, 13.5, 16.0])
    assert staleness_rows(run_dir)[-1] == (4, 1, 3.0)


def test_asynchronous_run_is_seeded_and_resumes_identically(tmp_path: Path) -> None:
    scenario = async_scenario(tmp_path, {"name": "fedbuff", "buffer_size": 3}, rounds=6)
    scenario["data"]["num_clients"] = 2
    scenario["system"]["jitter"] = 0.4
    scenario["checkpoint"] = {"every": 2}
    path = write_scenario(tmp_path, scenario, "async.toml")
    reference, _ = run_scenario(load_scenario(path), tmp_path / "reference")
    again, _ = run_scenario(load_scenario(path), tmp_path / "again")
    assert_same_results_fresh(again, reference)
    with pytest.raises(Crash):
        run_scenario(load_scenario(path), tmp_path / "crashed", on_round_end=crash_after(3))
    assert load_checkpoint(tmp_path / "crashed").round == 2
    resumed, _ = resume_run(tmp_path / "crashed")
    assert_same_results(resumed, reference)


def assert_same_results_fresh(a: Path, b: Path) -> None:
    fa, fb = final(a), final(b)
    assert all(fa[k].tobytes() == fb[k].tobytes() for k in fa)
    ma, mb = load_run(a).metrics, load_run(b).metrics
    assert (
        ma[ma.phase != "timing"]
        .reset_index(drop=True)
        .equals(mb[mb.phase != "timing"].reset_index(drop=True))
    )


def test_asynchronous_strategy_needs_a_system_table(tmp_path: Path) -> None:
    scenario = toy_scenario(num_clients=2)
    scenario["strategy"] = {"name": "fedbuff"}
    with pytest.raises(ScenarioError, match=r"strategy\.name: expected a \[system\] table too"):
        validate(scenario_from_dict(scenario, source="s.toml", base_dir=tmp_path))
    scenario["system"] = {"compute": 1.0}
    scenario["strategy"] = {"name": "fedbuff", "buffer_size": 0}
    with pytest.raises(ScenarioError, match="buffer_size"):
        validate(scenario_from_dict(scenario, source="s.toml", base_dir=tmp_path))


def test_asynchronous_run_on_ray_equals_inline(tmp_path: Path, ray_session: None) -> None:
    scenario = async_scenario(tmp_path, {"name": "fedbuff", "buffer_size": 2}, rounds=3)
    scenario["system"]["jitter"] = 0.4
    inline = run_toy(tmp_path, scenario, "inline")
    scenario["engine"] = {"kind": "ray", "num_actors": 2}
    on_ray = run_toy(tmp_path, scenario, "ray")
    assert_same_results_fresh(on_ray, inline)


@pytest.mark.parametrize("name", ["fedavg", "fedavg-deadline", "fedbuff"])
def test_the_worked_scenarios_validate(name: str) -> None:
    root = Path(__file__).resolve().parents[1] / "scenarios" / "simulated_time"
    validate(load_scenario(root / f"{name}.toml"))
