"""Differential privacy around strategies: the wrapper's rounds on hand-checked numbers,
the accountant against dp-accounting and a published figure, the [privacy] table's
errors, and runs that report their accounting and resume identically after kill -9."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, cast

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedsim.analysis import load_run
from fedsim.config import Scenario, load_scenario
from fedsim.errors import ScenarioError
from fedsim.privacy.accounting import Accountant, epsilon, sampling_of
from fedsim.privacy.options import PrivacyConfig
from fedsim.privacy.wrapper import PrivateStrategy
from fedsim.seeding import rng
from fedsim.simulation.entry import resume_run, run_scenario
from fedsim.strategies.fedau import FedAU
from fedsim.strategies.fedavg import FedAvg
from tests.helpers import (
    FAULTY_APP,
    FixedGrid,
    assert_same_results,
    run_cli,
    start_cli,
    wait_for_checkpoint,
    write_scenario,
)


def config(**changes: Any) -> PrivacyConfig:
    values: dict[str, Any] = {
        "mode": "central",
        "noise_multiplier": 1.0,
        "clipping": "fixed",
        "clip_norm": 1.0,
        "delta": 1e-5,
        "weighting": "auto",
        "accountant": "rdp",
    }
    return PrivacyConfig(**{**values, **changes})


def wrap(strategy: Any, num_clients: int, seed: int = 5, **changes: Any) -> PrivateStrategy:
    probabilities = np.ones(num_clients)
    sampling = sampling_of("always", num_clients=num_clients, probabilities=probabilities)
    return PrivateStrategy(
        strategy, config(**changes), num_clients=num_clients, seed=seed, sampling=sampling
    )


@pytest.fixture(autouse=True)
def _identity(flower_identity: None) -> None:
    """Flower's messages need the process-wide TaskIdentity (tests/conftest.py)."""


def one_round(
    strategy: Any, rnd: int, x: list[float], replies: dict[int, tuple[list[float], float]]
) -> Any:
    """Send x to nodes 1..4; the nodes in ``replies`` answer (arrays, num-examples)."""
    grid = cast(Grid, FixedGrid([1, 2, 3, 4]))
    arrays = ArrayRecord({"w": Array(np.asarray(x, dtype=np.float32))})
    messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
    answers = []
    for message in messages:
        if message.metadata.dst_node_id in replies:
            values, examples = replies[message.metadata.dst_node_id]
            content = RecordDict(
                {
                    "arrays": ArrayRecord({"w": Array(np.asarray(values, dtype=np.float32))}),
                    "metrics": MetricRecord({"num-examples": examples}),
                }
            )
            answers.append(Message(content, reply_to=message))
    new, _ = strategy.aggregate_train(rnd, answers)
    assert new is not None or not answers
    return x if new is None else new["w"].numpy().astype(np.float64)


def noise(seed: int, rnd: int, size: int, std: float) -> np.ndarray:
    return rng(seed, "privacy-noise", rnd).standard_normal(size) * std


# --- the wrapper's rounds ----------------------------------------------------------


def test_fedavg_over_participants_gets_the_clipped_weighted_mean_plus_noise() -> None:
    # Δ_1 = (3, 4) → clipped to (0.6, 0.8); Δ_2 = (0, 0.5) kept; weights n/Σn = 1/4, 3/4.
    # S = 2C · n_max/max(Σn, n_max) = 2 · 3/4 = 1.5 (n_max: the round's largest, no store).
    wrapped = wrap(FedAvg(num_clients=4), 4)
    got = one_round(wrapped, 1, [1.0, 1.0], {1: ([4.0, 5.0], 1.0), 2: ([1.0, 1.5], 3.0)})
    expected = 1.0 + np.array([0.15, 0.2 + 0.375]) + noise(5, 1, 2, 1.5)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert wrapped.round_metrics["noise_std"] == 1.5
    assert wrapped.round_metrics["unclipped_fraction"] == 0.5
    assert wrapped.client_metrics  # the wrapped strategy's attributes show through


def test_flowers_own_fedavg_is_wrapped_the_same_way() -> None:
    wrapped = wrap(FlowerFedAvg(), 4, seed=9, noise_multiplier=0.5)
    got = one_round(wrapped, 2, [0.0, 0.0], {3: ([3.0, 4.0], 1.0), 4: ([0.0, 0.5], 3.0)})
    expected = np.array([0.15, 0.575]) + noise(9, 2, 2, 0.5 * 1.5)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_fedavg_over_all_clients_noises_at_c_over_n() -> None:
    # w = 1/N = 1/4 each, S = C/N = 1/4; the strategy's sum holds exactly one ξ.
    wrapped = wrap(FedAvg(num_clients=4, rule="all"), 4, noise_multiplier=2.0)
    got = one_round(wrapped, 1, [0.0, 0.0], {1: ([3.0, 4.0], 1.0), 2: ([0.0, 0.5], 1.0)})
    expected = np.array([0.15, 0.325]) + noise(5, 1, 2, 2.0 * 0.25)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert wrapped.weighting == "all"


def test_fedau_weights_by_its_own_omega_and_noises_at_the_omega_bound() -> None:
    """Node 1 replies in rounds 1, 3 and 5: its ω is 1, 1, then 1.5 (intervals 1 and 2);
    the noise std is σ · C · min(K, t − 1)/N: 1/4, 2/4, 4/4."""
    wrapped = wrap(FedAU(num_clients=4), 4)
    x = np.array([0.0, 0.0])
    for rnd, omega, bound in ((1, 1.0, 1.0), (3, 1.0, 2.0), (5, 1.5, 4.0)):
        update = np.array([0.0, 0.5])
        got = one_round(wrapped, rnd, x.tolist(), {1: ((x + update).tolist(), 1.0)})
        expected = x + omega / 4 * update + noise(5, rnd, 2, bound / 4)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert wrapped.client_metrics[1]["omega"] == omega
        x = got
        one_round(wrapped, rnd + 1, x.tolist(), {})  # nobody replies: the model stays


def test_adaptive_clipping_moves_the_norm_from_a_noised_count() -> None:
    # Two updates of norms 5 and 0.5 with C = 1: one within C. σ_b = 1 (count_stddev);
    # all 4 clients expected (pattern "always"): b̃ = (1 − 1 + noise)/4 + 1/2,
    # C ← C · exp(−0.2 (b̃ − 0.5)).
    wrapped = wrap(
        FedAvg(num_clients=4), 4, clipping="adaptive", count_stddev=1.0, noise_multiplier=0.0
    )
    one_round(wrapped, 1, [0.0, 0.0], {1: ([3.0, 4.0], 1.0), 2: ([0.0, 0.5], 1.0)})
    count_noise = rng(5, "privacy-count", 1).normal(0.0, 1.0)
    assert wrapped.clip_norm == pytest.approx(np.exp(-0.2 * (count_noise / 4)))
    assert wrapped.round_metrics["clip_norm"] == 1.0  # the norm this round used
    restored = wrap(FedAvg(num_clients=4), 4, clipping="adaptive", count_stddev=1.0)
    restored.load_state_dict(wrapped.state_dict())
    assert restored.clip_norm == wrapped.clip_norm


def test_strategies_without_one_global_model_are_refused() -> None:
    class Decentralised(FlowerFedAvg):
        def evaluate_nodes(self, evaluate: Any) -> dict[int, dict[str, float]]:
            return {}

    class Asynchronous(FlowerFedAvg):
        asynchronous = True

    with pytest.raises(ValueError, match="decentralised"):
        wrap(Decentralised(), 4)
    with pytest.raises(ValueError, match="asynchronous"):
        wrap(Asynchronous(), 4)
    with pytest.raises(ValueError, match="omega_of"):
        wrap(FedAvg(num_clients=4), 4, weighting="fedau")
    with pytest.raises(ValueError, match="known-probability"):
        probabilities = dict.fromkeys([1, 2, 3, 4], 0.5)
        wrap(
            FedAvg(
                num_clients=4, rule="known-probability", participation_probabilities=probabilities
            ),
            4,
        )


# --- the accountant --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_epsilon_is_dp_accountings_for_the_same_q_sigma_and_steps(kind: str) -> None:
    q, sigma, steps, delta = 0.05, 1.2, 40, 1e-5
    engine = rdp.RdpAccountant() if kind == "rdp" else pld.PLDAccountant()
    engine.compose(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    assert epsilon(q, sigma, steps, delta, kind) == engine.get_epsilon(delta)


def test_epsilon_agrees_with_tensorflow_privacys_published_figure() -> None:
    """TensorFlow Privacy, tensorflow_privacy/privacy/analysis/compute_dp_sgd_privacy_test.py
    (github.com/tensorflow/privacy): n = 60000, batch 150 (q = 0.0025), noise multiplier
    1.3, 15 epochs (6000 steps), δ = 1e-5 → ε = 0.7242234026109595 (RDP, order 19)."""
    assert epsilon(150 / 60000, 1.3, 6000, 1e-5) == pytest.approx(0.7242234026109595, abs=1e-9)


def test_the_accountants_cached_rdp_curve_gives_dp_accountings_epsilon() -> None:
    sampling = sampling_of("uniform", num_clients=10, probabilities=np.full(10, 0.2))
    accountant = Accountant(sampling, 0.8, 1e-6)
    assert [accountant.worst(t) for t in (1, 2, 7, 50)] == [
        epsilon(0.2, 0.8, t, 1e-6) for t in (1, 2, 7, 50)
    ]


def test_many_distinct_rates_are_rounded_up_never_down() -> None:
    rates = np.linspace(0.501, 0.599, 210)  # 210 distinct rates → 0.51, 0.52, ..., 0.60
    sampling = sampling_of("bernoulli", num_clients=210, probabilities=rates)
    per_client = Accountant(sampling, 1.0, 1e-5).per_client(3)
    assert np.unique(per_client).size == 10
    for i in (0, 105, 209):
        exact = epsilon(float(rates[i]), 1.0, 3, 1e-5)
        assert exact <= per_client[i] <= exact * 1.05


def test_sampling_per_pattern() -> None:
    uniform = sampling_of("uniform", num_clients=10, probabilities=np.full(10, 0.3), fraction=0.5)
    assert uniform.amplified and uniform.worst == 0.15
    p = np.array([0.1, 0.4, 0.2])
    bernoulli = sampling_of("bernoulli", num_clients=3, probabilities=p)
    np.testing.assert_array_equal(bernoulli.rates, p)
    assert bernoulli.worst == 0.4 and "worst client q = 0.4" in bernoulli.statement
    accountant = Accountant(bernoulli, 1.0, 1e-5)
    per_client = accountant.per_client(10)
    assert per_client.tolist() == [epsilon(q, 1.0, 10, 1e-5) for q in p]
    assert accountant.worst(10) == per_client[1] == per_client.max()
    for pattern in ("markov", "cyclic", "trace", "script"):
        none = sampling_of(pattern, num_clients=3, probabilities=p)
        assert not none.amplified and none.rates.tolist() == [1.0, 1.0, 1.0]
        assert none.statement.startswith("no amplification by sampling")
    assert epsilon(0.1, 0.0, 3, 1e-5) == float("inf")


# --- the [privacy] table ----------------------------------------------------------

BASE = {"rounds": 2, "data": {"dataset": "digits", "num_clients": 4}, "model": {"name": "mlp"}}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"noise_multiplier": -1, "clip_norm": 1}, "privacy.noise_multiplier: expected a number"),
        ({"noise_multiplier": 1, "clip_norm": 1, "delta": 1}, "privacy.delta: expected a number"),
        ({"noise_multiplier": 1, "clip_norm": 1, "delta": 0}, "privacy.delta: expected a number"),
        ({"noise_multiplier": 1}, "privacy.clip_norm: expected a number > 0 (fixed clipping"),
        ({"clip_norm": 1}, "privacy.noise_multiplier: expected a number"),
        ({"noise_multiplier": 1, "clip_norm": 1, "clip_lr": 1}, "privacy.clip_lr: expected no"),
    ],
)
def test_bad_privacy_tables_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=f"^run.toml: {message}".replace("(", r"\(")):
        Scenario.from_dict({**BASE, "privacy": table}, source="run.toml")


@pytest.mark.slow
def test_the_cli_refuses_a_negative_noise_in_one_line_with_exit_2(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, {**BASE, "privacy": {"noise_multiplier": -0.5, "clip_norm": 1}})
    done = run_cli("run", str(path), "--out", "r", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {path}: privacy.noise_multiplier: expected a number >= 0.0, got -0.5"
    ]


# --- runs -------------------------------------------------------------------------


def toy(pattern: dict[str, Any], rounds: int = 4, **privacy: Any) -> dict[str, Any]:
    return {
        "name": "dp",
        "seed": 3,
        "rounds": rounds,
        "data": {"num_clients": 4},
        "model": {"factory": f"{FAULTY_APP}:make_model"},
        "client": {"app": f"{FAULTY_APP}:app", "config": {}},
        "participation": pattern,
        "strategy": {"name": "fedau"},
        "engine": {"kind": "inline"},
        "privacy": {"noise_multiplier": 1.5, "clip_norm": 2.0, **privacy},
    }


def test_a_cyclic_run_says_it_has_no_amplification_and_accounts_q_1(tmp_path: Path) -> None:
    scenario = toy({"pattern": "cyclic", "rates": 0.5, "period": 2})
    run_dir, summary = run_scenario(
        load_scenario(write_scenario(tmp_path, scenario)), tmp_path / "run"
    )
    statement = summary["privacy_accounting"]
    assert statement.startswith("no amplification by sampling: the cyclic pattern")
    run = load_run(run_dir)
    assert [e["statement"] for e in run.events if e["event"] == "privacy_accounting"] == [statement]
    rows = run.metrics[(run.metrics.phase == "privacy") & (run.metrics.metric == "epsilon")]
    per_round = rows[rows.client.isna()].set_index("round")["value"]
    assert per_round.tolist() == [epsilon(1.0, 1.5, t, 1e-5) for t in (1, 2, 3, 4)]
    assert summary["epsilon"] == per_round[4] and summary["delta"] == 1e-5
    assert json.loads((run_dir / "summary.json").read_text())["epsilon"] == summary["epsilon"]
    assert rows[rows.client.notna()]["value"].tolist() == [per_round[4]] * 4


def test_a_bernoulli_run_accounts_each_client_at_its_own_rate(tmp_path: Path) -> None:
    rates = [0.2, 0.4, 0.6, 0.8]
    scenario = toy({"pattern": "bernoulli", "rates": rates}, rounds=2)
    run_dir, summary = run_scenario(
        load_scenario(write_scenario(tmp_path, scenario)), tmp_path / "run"
    )
    assert summary["privacy_accounting"] == (
        "Poisson sampling with each client's own rate q_n = p_n (worst client q = 0.8)"
    )
    assert summary["epsilon"] == epsilon(0.8, 1.5, 2, 1e-5)
    run = load_run(run_dir)
    rows = run.metrics.query("phase == 'privacy' and metric == 'epsilon' and round == 2")
    per_client = rows.dropna(subset=["client"]).sort_values("client")["value"].tolist()
    assert per_client == [epsilon(q, 1.5, 2, 1e-5) for q in rates]


@pytest.mark.slow
def test_a_dp_run_killed_with_sigkill_resumes_identically(tmp_path: Path) -> None:
    scenario = toy({"pattern": "bernoulli", "rates": 0.6}, rounds=6, clipping="adaptive")
    scenario["privacy"]["count_stddev"] = 1.0
    scenario["client"]["config"] = {"every_sleep_s": 0.1}
    scenario["checkpoint"] = {"every": 1}
    path = write_scenario(tmp_path, scenario)
    reference, _ = run_scenario(load_scenario(path), tmp_path / "reference")
    process = start_cli("run", str(path), "--out", "killed", cwd=tmp_path)
    wait_for_checkpoint(tmp_path / "killed", 3, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (tmp_path / "killed" / "summary.json").exists()
    resumed, _ = resume_run(tmp_path / "killed")
    assert_same_results(resumed, reference)
    clip = load_run(resumed).metrics.query("phase == 'privacy' and metric == 'clip_norm'")
    assert clip["value"].nunique() > 1  # the adaptive norm moved, and came back on resume


# --- local DP -----------------------------------------------------------------------


def test_a_client_clips_and_noises_its_own_reply() -> None:
    from fedsim.privacy.local import LocalPrivacy, privatise_reply

    sent = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.array([1.0, 1.0], dtype=np.float32))}),
            "config": ConfigRecord({"server-round": 3}),
        }
    )
    message = Message(sent, dst_node_id=11, message_type="train")
    reply = Message(
        RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(np.array([4.0, 5.0], dtype=np.float32))}),
                "metrics": MetricRecord({"num-examples": 2}),
            }
        ),
        reply_to=message,
    )
    privatise_reply(message, reply, 2, LocalPrivacy(clip_norm=1.0, noise_multiplier=0.5, seed=8))
    # Δ = (3, 4) → (0.6, 0.8); noise std σC = 0.5 from (seed 8, client 2, round 3).
    xi = rng(8, "privacy-local", 2, 3).standard_normal(2) * 0.5
    got = reply.content["arrays"]["w"].numpy()
    np.testing.assert_allclose(got, np.array([1.6, 1.8]) + xi, rtol=1e-6)
    assert reply.content["metrics"]["num-examples"] == 2


def digits(cohort: str, privacy: dict[str, Any] | None) -> dict[str, Any]:
    scenario: dict[str, Any] = {
        "name": "local",
        "seed": 2,
        "rounds": 2,
        "data": {"dataset": "digits", "num_clients": 4, "partition": "iid"},
        "model": {"name": "mlp", "hidden": [8]},
        "client": {"local_steps": 2, "batch_size": 8, "lr": 0.1},
        "engine": {"kind": "inline", "cohort": cohort},
        "evaluate": {"central": False},
    }
    if privacy is not None:
        scenario["privacy"] = privacy
    return scenario


@pytest.mark.slow
def test_local_dp_is_the_same_on_the_cohort_path_and_one_message_at_a_time(
    tmp_path: Path,
) -> None:
    local = {"mode": "local", "noise_multiplier": 1.0, "clip_norm": 0.05}
    finals = {}
    for label, cohort, privacy in [
        ("auto", "auto", local),
        ("off", "off", local),
        ("plain", "auto", None),
    ]:
        run_dir, summary = run_scenario(
            load_scenario(write_scenario(tmp_path, digits(cohort, privacy), f"{label}.toml")),
            tmp_path / label,
        )
        finals[label] = np.load(run_dir / "final_model.npz")
        if label == "auto":
            assert summary["cohort_client_rounds"] == summary["client_rounds"] > 0
            assert summary["privacy_accounting"].startswith("local DP")
            assert summary["epsilon"] == epsilon(1.0, 0.5, 2, 1e-5)
    for name in finals["auto"].files:
        np.testing.assert_allclose(finals["auto"][name], finals["off"][name], atol=1e-5)
    # The noise (std 0.05 per coordinate per client) is really there.
    differences = [
        np.abs(finals["auto"][name] - finals["plain"][name]).max() for name in finals["auto"].files
    ]
    assert max(differences) > 0.01
