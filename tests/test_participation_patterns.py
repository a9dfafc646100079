"""The stochastic patterns: long-run rates, Markov transitions, exact cyclic runs,
determinism and the resume property (a fresh pattern asked round k answers as a
sequential one did)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from fedsim.participation import PATTERN_NAMES, build_pattern
from fedsim.participation.matrix import participation_matrix
from fedsim.participation.patterns import (
    BernoulliPattern,
    CyclicPattern,
    DiurnalPattern,
    MarkovPattern,
    UniformPattern,
    client_uniforms,
    cycle_lengths,
    markov_transitions,
)
from fedsim.seeding import rng

RATES = np.array([0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.0, 1.0])


def build(options: dict, num_clients: int = 10, seed: int = 0, labels=None):
    return build_pattern(
        options,
        num_clients=num_clients,
        seed=seed,
        label_distribution=labels,
        source="s.toml",
        base_dir=Path("."),
    )


def test_client_uniforms_are_positions_of_each_clients_seeded_stream():
    u = client_uniforms(11, "participation.bernoulli", range(3, 5), 7, 4)
    for row, client in enumerate((3, 4)):
        expected = rng(11, "participation.bernoulli", client).random(11)[7:]
        np.testing.assert_array_equal(u[row], expected)


def test_bernoulli_rate_matches_p_within_five_standard_errors():
    rounds = 20_000
    matrix = participation_matrix(BernoulliPattern(RATES, seed=1), rounds)
    rate = matrix.mean(axis=1)
    tolerance = 5 * np.sqrt(RATES * (1 - RATES) / rounds)
    assert (np.abs(rate - RATES) <= tolerance).all()
    assert rate[8] == 0.0 and rate[9] == 1.0


def test_bernoulli_is_u_below_p_on_each_clients_stream():
    pattern = BernoulliPattern(RATES, seed=2, block_rounds=4)
    matrix = participation_matrix(pattern, 10)
    u = client_uniforms(2, "participation.bernoulli", range(10), 0, 10)
    np.testing.assert_array_equal(matrix, u < RATES[:, None])


def reference_markov(p: float, a: float, u: np.ndarray) -> np.ndarray:
    """IBM/fedau WorkerSampler('markov-a'), fed with the uniforms u (u[0]: start state)."""
    to_inactive = a * (1 / p - 1) if p > 0 else np.inf
    to_active = a
    if to_inactive > 1:
        to_active /= to_inactive
        to_inactive = 1
    active = u[0] < p
    states = []
    for x in u[1:]:
        active = (not x < to_inactive) if active else bool(x < to_active)
        states.append(active)
    return np.array(states)


def test_markov_is_the_reference_chain_on_each_clients_stream():
    pattern = MarkovPattern(RATES, a=0.05, seed=3, block_rounds=16)
    matrix = participation_matrix(pattern, 100)
    u = client_uniforms(3, "participation.markov", range(10), 0, 101)
    for n, p in enumerate(RATES):
        np.testing.assert_array_equal(matrix[n], reference_markov(p, 0.05, u[n]))


def test_markov_rate_and_transition_frequencies():
    rounds, a = 40_000, 0.05
    p = RATES[:8]
    matrix = participation_matrix(MarkovPattern(p, a=a, seed=4), rounds)
    to_on, to_off = markov_transitions(p, a)
    np.testing.assert_allclose(to_off, np.minimum(1, a * (1 / p - 1)))
    np.testing.assert_allclose(to_on / (to_on + to_off), p)  # the stationary rate is p
    lag = 1 - to_on - to_off  # autocorrelation of the chain inflates the rate's variance
    se = np.sqrt(p * (1 - p) / rounds * (1 + lag) / (1 - lag))
    assert (np.abs(matrix.mean(axis=1) - p) <= 5 * se).all()
    before, after = matrix[:, :-1], matrix[:, 1:]
    off, on = (~before).sum(axis=1), before.sum(axis=1)
    freq_on = (~before & after).sum(axis=1) / off
    freq_off = (before & ~after).sum(axis=1) / on
    assert (np.abs(freq_on - to_on) <= 5 * np.sqrt(to_on * (1 - to_on) / off)).all()
    assert (np.abs(freq_off - to_off) <= 5 * np.sqrt(to_off * (1 - to_off) / on) + 1e-12).all()


def test_markov_degenerate_rates():
    matrix = participation_matrix(MarkovPattern(np.array([0.0, 1.0]), a=0.3, seed=0), 200)
    assert not matrix[0].any() and matrix[1].all()


def test_cycle_lengths_follow_the_reference_rounding():
    on, off = cycle_lengths(np.array([0.1, 0.025, 0.035, 0.004, 0.999, 1.0]), 100)
    assert on.tolist() == [10, 2, 4, 1, 100, 100]
    assert off.tolist() == [90, 98, 96, 99, 1, 1]


def runs(row: np.ndarray) -> list[tuple[bool, int]]:
    """(state, length) of each maximal run in a boolean row."""
    edges = np.flatnonzero(np.diff(row.astype(int))) + 1
    bounds = [0, *edges.tolist(), len(row)]
    return [(bool(row[lo]), hi - lo) for lo, hi in itertools.pairwise(bounds)]


def test_cyclic_runs_are_exact():
    p = np.linspace(0.01, 0.9, 40)
    pattern = CyclicPattern(p, period=20, seed=5)
    matrix = participation_matrix(pattern, 300)
    on, off = cycle_lengths(p, 20)
    for n in range(len(p)):
        row_runs = runs(matrix[n])
        c = pattern.countdown[n]
        assert 0 <= c < off[n]
        if c > 0:  # off in rounds 1..c, then the first full on-run
            assert row_runs[0] == (False, c)
            row_runs = row_runs[1:]
        for state, length in row_runs[:-1]:  # the last run may be cut by the horizon
            assert length == (on[n] if state else off[n])
        assert row_runs[0][0] is True


def reference_cyclic(period: int, p: float, countdown: int, rounds: int) -> list[bool]:
    """IBM/fedau WorkerSampler('cyclic-P') with its random countdown given."""
    active_rounds = max(1, int(np.round(period * p)))
    inactive_rounds = max(1, period - active_rounds)
    active, to_switch, states = False, countdown, []
    for _ in range(rounds):
        if to_switch == 0:
            active = not active
            to_switch = active_rounds if active else inactive_rounds
        to_switch -= 1
        states.append(active)
    return states


def test_cyclic_is_the_reference_state_machine():
    p = np.array([0.02, 0.1, 0.33, 0.5, 0.9])
    pattern = CyclicPattern(p, period=100, seed=6)
    matrix = participation_matrix(pattern, 450)
    for n in range(len(p)):
        expected = reference_cyclic(100, p[n], int(pattern.countdown[n]), 450)
        assert matrix[n].tolist() == expected


def test_cyclic_countdown_is_uniform_over_the_off_length():
    pattern = CyclicPattern(np.full(4000, 0.5), period=8, seed=7)  # off length 4
    counts = np.bincount(pattern.countdown, minlength=4)
    assert counts.sum() == 4000 and (np.abs(counts - 1000) < 5 * np.sqrt(1000 * 0.75)).all()


def test_diurnal_follows_the_sine_and_keeps_the_long_run_rate():
    p = np.array([0.1, 0.3, 0.5])
    pattern = DiurnalPattern(p, period=8, amplitude=0.8, seed=8)
    t = np.arange(1, 9)
    expected = p[:, None] * (1 + 0.8 * np.sin(2 * np.pi * (t - 1) / 8))
    np.testing.assert_allclose(pattern.thresholds(t, range(3)), expected, atol=1e-12)
    rounds = 16_000
    matrix = participation_matrix(pattern, rounds)
    assert (np.abs(matrix.mean(axis=1) - p) <= 5 * np.sqrt(p * (1 - p) / rounds)).all()
    peak = matrix[:, 2::8].mean(axis=1)  # rounds 3, 11, ...: sin = 1
    assert (np.abs(peak - 1.8 * p) <= 5 * np.sqrt(1.8 * p * (1 - 1.8 * p) / 2000)).all()


def test_diurnal_phase_spread_shifts_each_client():
    pattern = DiurnalPattern(np.full(2, 0.5), period=4, amplitude=1.0, phase_spread=1, seed=9)
    u = client_uniforms(9, "participation.diurnal.phase", range(2), 0, 1)[:, 0]
    np.testing.assert_array_equal(pattern.phases, u)


def test_uniform_takes_k_distinct_clients_from_the_rounds_stream():
    pattern = UniformPattern(50, 5, seed=10)
    for r in (1, 2, 77):
        chosen = pattern.reachable(r)
        expected = np.sort(rng(10, "participation.uniform", r).choice(50, 5, replace=False))
        np.testing.assert_array_equal(chosen, expected)
    matrix = participation_matrix(pattern, 4000)
    assert (matrix.sum(axis=0) == 5).all()
    assert (np.abs(matrix.mean(axis=1) - 0.1) <= 5 * np.sqrt(0.1 * 0.9 / 4000)).all()


PATTERN_OPTIONS = {
    "always": {},
    "uniform": {"clients_per_round": 3},
    "bernoulli": {"rates": RATES.tolist()},
    "markov": {"rates": RATES.tolist(), "a": 0.2},
    "cyclic": {"rates": RATES.tolist(), "period": 6},
    "diurnal": {"rates": RATES.tolist(), "period": 5, "phase_spread": 0.5},
}


@pytest.mark.parametrize("name", list(PATTERN_OPTIONS))
def test_resume_from_any_round_gives_the_uninterrupted_answer(name):
    options = {"pattern": name, **PATTERN_OPTIONS[name]}
    sequential = [build(options).reachable(r) for r in range(1, 600)]
    for k in (1, 2, 255, 256, 257, 300, 513, 599):
        fresh = build(options)
        got = [fresh.reachable(r) for r in range(k, min(k + 3, 600))]
        for r, answer in enumerate(got, start=k):
            np.testing.assert_array_equal(answer, sequential[r - 1])
            assert answer.dtype == np.int64
    jumping = build(options)  # any order of questions
    for r in (400, 3, 257, 256, 599, 1):
        np.testing.assert_array_equal(jumping.reachable(r), sequential[r - 1])


def test_every_pattern_name_is_covered_by_resume_or_its_own_tests():
    assert set(PATTERN_NAMES) == {*PATTERN_OPTIONS, "trace", "script"}


@pytest.mark.parametrize("cls", [BernoulliPattern, MarkovPattern, DiurnalPattern])
def test_block_size_changes_speed_never_the_answer(cls):
    extra = {"a": 0.1} if cls is MarkovPattern else {}
    if cls is DiurnalPattern:
        extra = {"period": 7.5, "amplitude": 0.5}
    small = participation_matrix(cls(RATES, seed=12, block_rounds=3, **extra), 100)
    large = participation_matrix(cls(RATES, seed=12, block_rounds=64, **extra), 100)
    np.testing.assert_array_equal(small, large)


def test_same_seed_same_matrix_other_seed_other_matrix():
    options = {"pattern": "markov", "rates": 0.3}
    one = participation_matrix(build(options, seed=1), 200)
    np.testing.assert_array_equal(one, participation_matrix(build(options, seed=1), 200))
    assert (one != participation_matrix(build(options, seed=2), 200)).any()


def test_a_clients_rows_do_not_depend_on_the_number_of_clients():
    small = participation_matrix(build({"pattern": "bernoulli", "rates": 0.4}, 5), 50)
    large = participation_matrix(build({"pattern": "bernoulli", "rates": 0.4}, 500), 50)
    np.testing.assert_array_equal(small, large[:5])


def test_rounds_start_at_one():
    for name, options in PATTERN_OPTIONS.items():
        with pytest.raises(ValueError, match="rounds start at 1, got 0"):
            build({"pattern": name, **options}).reachable(0)
