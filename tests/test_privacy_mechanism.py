"""The privacy mechanism's math on vectors worked out by hand, and its seeded noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsim.privacy.mechanism import (
    adaptive_clip_norm,
    clip,
    fedau_weight_bound,
    gaussian_noise,
    privatise,
    sensitivity_all,
    sensitivity_fedau,
    sensitivity_participants,
    split_noise_multiplier,
)
from fedsim.seeding import rng


def test_clip_scales_long_updates_to_the_norm_and_keeps_short_ones() -> None:
    clipped, norm = clip(np.array([6.0, 8.0, 0.0]), 2.0)  # ‖·‖ = 10
    assert norm == 10.0
    np.testing.assert_allclose(clipped, [1.2, 1.6, 0.0])
    kept, norm = clip(np.array([1.0, -1.0]), 2.0)
    assert norm == pytest.approx(math.sqrt(2))
    np.testing.assert_array_equal(kept, [1.0, -1.0])


def test_seeded_noise_is_the_generators_normal_draws_times_std() -> None:
    noise = gaussian_noise(3, 0.5, rng(7, "privacy-noise", 1))
    expected = rng(7, "privacy-noise", 1).standard_normal(3) * 0.5
    np.testing.assert_array_equal(noise, expected)
    again = gaussian_noise(3, 0.5, rng(7, "privacy-noise", 1))
    np.testing.assert_array_equal(noise, again)
    assert not np.array_equal(noise, gaussian_noise(3, 0.5, rng(7, "privacy-noise", 2)))
    np.testing.assert_array_equal(gaussian_noise(2, 0.0, rng(0, "x")), [0.0, 0.0])


def test_privatise_gives_the_weighted_sum_of_clipped_updates_plus_the_noise() -> None:
    # Δ_1 = (3, 4) is clipped to (0.6, 0.8); Δ_2 = (0, 0.5) is kept. Weights 1/4 and 3/4
    # (W = 1): Σ w clip(Δ) = (0.15, 0.2 + 0.375) = (0.15, 0.575).
    updates = np.array([[3.0, 4.0], [0.0, 0.5]])
    weights = np.array([0.25, 0.75])
    rows, norms = privatise(
        updates, weights, clip_norm=1.0, noise_std=0.1, generator=rng(3, "privacy-noise", 1)
    )
    xi = rng(3, "privacy-noise", 1).standard_normal(2) * 0.1
    np.testing.assert_array_equal(norms, [5.0, 0.5])
    np.testing.assert_allclose(weights @ rows, np.array([0.15, 0.575]) + xi, atol=1e-15)
    # Weights that do not sum to 1 (FedAvg over all N = 8 clients: w = 1/8, W = 1/4):
    # each row carries ξ/W, so the strategy's sum still holds exactly ξ.
    weights = np.array([0.125, 0.125])
    rows, _ = privatise(
        updates, weights, clip_norm=1.0, noise_std=0.1, generator=rng(3, "privacy-noise", 1)
    )
    np.testing.assert_allclose(rows[0] - np.array([0.6, 0.8]), xi * 4, atol=1e-15)
    np.testing.assert_allclose(weights @ rows, np.array([0.075, 0.1625]) + xi, atol=1e-15)


def test_sensitivity_of_fedavg_over_participants() -> None:
    # Equal clients: 2C/|S|. Four clients of 10 examples, C = 1.5: 2 · 1.5 · 10/40 = 0.75.
    assert sensitivity_participants(1.5, np.array([10, 10, 10, 10]), 10) == 0.75
    # Uneven: n = (10, 30), n_max of the population 50: 2 · 1 · 50/max(40, 50) = 2.
    assert sensitivity_participants(1.0, np.array([10, 30]), 50) == 2.0
    # A big round: 2 · 1 · 50/200 = 0.5.
    assert sensitivity_participants(1.0, np.array([50, 50, 50, 50]), 50) == 0.5


def test_sensitivity_of_fedavg_over_all_and_of_fedau() -> None:
    assert sensitivity_all(1.0, 4) == 0.25
    # FedAU: ω is at most min(K, t − 1), and 1 in the first two rounds.
    assert [fedau_weight_bound(t, None) for t in (1, 2, 3, 11)] == [1.0, 1.0, 2.0, 10.0]
    assert fedau_weight_bound(100, 5) == 5.0
    assert sensitivity_fedau(2.0, 10, 11, None) == 2.0 * 10 / 10
    assert sensitivity_fedau(2.0, 10, 11, 4) == 2.0 * 4 / 10


def test_fedau_weight_bound_holds_for_the_strategys_own_omegas() -> None:
    """The ω FedAU computes never exceeds the bound the sensitivity uses."""
    from fedsim.strategies.fedau import Intervals, eager_round

    generator = np.random.default_rng(0)
    for cutoff in (None, 3):
        stats = Intervals.start(20)
        for t in range(1, 40):
            took_part = generator.random(20) < 0.2
            omega, stats = eager_round(stats, took_part, cutoff)
            assert omega[took_part].max(initial=0.0) <= fedau_weight_bound(t, cutoff)


def test_noise_split_and_the_geometric_clip_update_of_andrew_et_al() -> None:
    # σ = 1, σ_b = 5: (1 − 1/100)^(−1/2) = 1/√0.99.
    assert split_noise_multiplier(1.0, 5.0) == pytest.approx(1 / math.sqrt(0.99))
    assert split_noise_multiplier(0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="count_stddev"):
        split_noise_multiplier(1.0, 0.4)
    # 3 of 4 updates within C, 4 expected, γ = 0.5, η = 0.2: b̃ = (3 − 2)/4 + 1/2 = 3/4,
    # C · e^(−0.2 · 0.25).
    new = adaptive_clip_norm(
        2.0,
        unclipped=3,
        replies=4,
        expected=4.0,
        count_noise=0.0,
        target_quantile=0.5,
        learning_rate=0.2,
    )
    assert new == pytest.approx(2.0 * math.exp(-0.05))
    # 1 of 4 within C, 8 expected, count noise 1.5: b̃ = (1 − 2 + 1.5)/8 + 1/2 = 0.5625.
    moved = adaptive_clip_norm(
        2.0,
        unclipped=1,
        replies=4,
        expected=8.0,
        count_noise=1.5,
        target_quantile=0.5,
        learning_rate=0.2,
    )
    assert moved == pytest.approx(2.0 * math.exp(-0.2 * 0.0625))
    # No reply: the noise alone moves it; nothing expected: unchanged.
    alone = adaptive_clip_norm(
        2.0,
        unclipped=0,
        replies=0,
        expected=4.0,
        count_noise=-0.4,
        target_quantile=0.5,
        learning_rate=0.2,
    )
    assert alone == pytest.approx(2.0 * math.exp(0.2 * 0.1))
    unchanged = adaptive_clip_norm(
        2.0,
        unclipped=0,
        replies=0,
        expected=0.0,
        count_noise=0.3,
        target_quantile=0.5,
        learning_rate=0.2,
    )
    assert unchanged == 2.0


def test_participant_weighting_never_moves_more_than_its_sensitivity() -> None:
    """Brute force over random rounds: adding or removing one client moves the weighted
    mean Σ n_i clip(Δ_i)/Σ n_i by at most 2C·n_max/max(Σn, n_max) of the released set."""
    generator = np.random.default_rng(1)
    clip_norm, n_max = 1.0, 50
    worst_ratio = 0.0
    for _ in range(300):
        size = int(generator.integers(1, 6))
        counts = generator.integers(1, n_max + 1, size=size).astype(float)
        counts[0] = n_max if generator.random() < 0.3 else counts[0]
        updates = [clip(v, clip_norm)[0] for v in generator.normal(0, 2, (size, 3))]
        extra = clip(generator.normal(0, 2, 3), clip_norm)[0]
        extra_count = float(generator.integers(1, n_max + 1))

        def mean(vectors: list[np.ndarray], n: np.ndarray) -> np.ndarray:
            return sum(w * v for w, v in zip(n / n.sum(), vectors, strict=True))

        released = mean(updates, counts)
        bound = sensitivity_participants(clip_norm, counts, n_max)
        if size > 1:  # the neighbour without the last client
            smaller = mean(updates[:-1], counts[:-1])
            ratio = np.linalg.norm(released - smaller) / bound
            worst_ratio = max(worst_ratio, ratio)
        bigger = mean([*updates, extra], np.append(counts, extra_count))
        worst_ratio = max(worst_ratio, np.linalg.norm(released - bigger) / bound)
    assert worst_ratio <= 1.0 + 1e-12
    assert worst_ratio > 0.5  # the bound is not loose by more than 2x on these draws
