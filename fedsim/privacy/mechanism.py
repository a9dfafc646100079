"""The math of user-level differential privacy around an aggregation rule, as pure functions.

A round's privatised aggregate is Σ_i w_i clip(Δ_i) + ξ, with Δ_i = y_i − x a
client's update, clip(v) = v · min(1, C/‖v‖₂) and ξ ~ N(0, (σ·S)² I), where σ is
the noise multiplier and S the L2 sensitivity of the weighted sum Σ_i w_i clip(Δ_i)
to adding or removing one client (the adjacency the accountant assumes). S
depends on the weighting; derivations in docs/privacy.md:

- FedAvg over participants, w_i = n_i / Σ_{k∈S} n_k (McMahan et al. 2018,
  https://arxiv.org/abs/1710.06963, Lemma 1's clipped estimator):
  S = 2C · n_max / max(Σ_{k∈S} n_k, n_max), n_max the largest client;
- FedAvg over all clients, w_i = 1/N: S = C/N;
- FedAU, w_i = ω_i/N with ω_i the mean of client i's completed participation
  intervals: every interval is at most min(K, t − 1) rounds long in round t, so
  S = C · max(1, min(K, t − 1)) / N.

The wrapped strategy computes the weights itself: :func:`privatise` hands it
updates clip(Δ_i) + ξ/W with W = Σ_i w_i, so that its own weighted sum equals
the privatised aggregate exactly (for the linear rules above). Adaptive
clipping (Andrew et al. 2021, https://arxiv.org/abs/1905.03871) moves C
geometrically towards a target quantile of the update norms, from a noised
count of the unclipped updates (:func:`adaptive_clip_norm`).
"""

from __future__ import annotations

import math

import numpy as np


def clip(update: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """``update`` scaled to L2 norm at most ``clip_norm``, and its norm before clipping.

    >>> clipped, norm = clip(np.array([3.0, 4.0]), 1.0)
    >>> clipped.tolist(), norm
    ([0.6000000000000001, 0.8], 5.0)
    >>> clip(np.array([0.3, 0.4]), 1.0)[0].tolist()
    [0.3, 0.4]
    """
    norm = float(np.linalg.norm(update))
    if norm <= clip_norm:
        return update.copy(), norm
    return update * (clip_norm / norm), norm


def gaussian_noise(size: int, std: float, generator: np.random.Generator) -> np.ndarray:
    """``size`` draws of N(0, std²) (float64) from ``generator``; zeros when std = 0."""
    if std == 0.0:
        return np.zeros(size)
    return generator.standard_normal(size) * std


def sensitivity_participants(
    clip_norm: float, num_examples: np.ndarray, max_examples: float
) -> float:
    """S of Σ_i (n_i/Σn) clip(Δ_i) over this round's participants (``num_examples``: n_i;
    ``max_examples``: the largest n of any client, a public bound).

    >>> sensitivity_participants(1.0, np.array([10.0, 10.0, 10.0, 10.0]), 10.0)
    0.5
    >>> sensitivity_participants(1.0, np.array([5.0]), 10.0)  # one small client: 2C · 1
    2.0
    """
    total = float(np.sum(num_examples))
    return 2.0 * clip_norm * max_examples / max(total, max_examples)


def sensitivity_all(clip_norm: float, num_clients: int) -> float:
    """S of (1/N) Σ_i clip(Δ_i).

    >>> sensitivity_all(2.0, 8)
    0.25
    """
    return clip_norm / num_clients


def fedau_weight_bound(server_round: int, cutoff: int | None) -> float:
    """The largest ω FedAU can give in ``server_round`` (rounds from 1): a mean of
    intervals no longer than min(K, t − 1), and 1 before any completes.

    >>> fedau_weight_bound(1, None), fedau_weight_bound(30, None), fedau_weight_bound(30, 10)
    (1.0, 29.0, 10.0)
    """
    longest = server_round - 1 if cutoff is None else min(cutoff, server_round - 1)
    return float(max(1, longest))


def sensitivity_fedau(
    clip_norm: float, num_clients: int, server_round: int, cutoff: int | None
) -> float:
    """S of (1/N) Σ_i ω_i clip(Δ_i) in ``server_round``.

    >>> sensitivity_fedau(1.0, 10, 5, None)
    0.4
    """
    return clip_norm * fedau_weight_bound(server_round, cutoff) / num_clients


def privatise(
    updates: np.ndarray,
    weights: np.ndarray,
    *,
    clip_norm: float,
    noise_std: float,
    generator: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Clipped updates plus each one's share of the aggregate's noise, and the norms
    before clipping.

    ``updates``: (clients, parameters); ``weights``: the weights w_i the strategy
    will apply; ``noise_std``: σ·S. Each row becomes clip(Δ_i) + ξ/W, W = Σ w_i, so
    Σ_i w_i · row_i = Σ_i w_i clip(Δ_i) + ξ.

    >>> rows, norms = privatise(np.array([[3.0, 4.0], [0.0, 0.5]]), np.array([0.5, 0.5]),
    ...                         clip_norm=1.0, noise_std=0.0, generator=np.random.default_rng(0))
    >>> rows.tolist(), norms.tolist()
    ([[0.6000000000000001, 0.8], [0.0, 0.5]], [5.0, 0.5])
    """
    updates = np.asarray(updates, dtype=np.float64)
    clipped = np.empty_like(updates)
    norms = np.empty(len(updates))
    for i, update in enumerate(updates):
        clipped[i], norms[i] = clip(update, clip_norm)
    total_weight = float(np.sum(weights))
    if len(updates) == 0 or total_weight == 0.0:
        return clipped, norms
    noise = gaussian_noise(updates.shape[1], noise_std, generator)
    return clipped + noise / total_weight, norms


def split_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """The noise multiplier left for the updates when the centred unclipped count
    (sensitivity 1/2) is noised with ``count_stddev`` σ_b (Andrew et al. 2021, Theorem 1):
    (σ⁻² − (2σ_b)⁻²)^(−1/2). Two Gaussian releases with multipliers z₁, z₂ cost what one
    with (z₁⁻² + z₂⁻²)^(−1/2) does, so together they cost one with ``noise_multiplier``.

    >>> round(split_noise_multiplier(1.0, 5.0), 6)
    1.005038
    """
    if noise_multiplier == 0.0:
        return 0.0
    if count_stddev == 0.0:
        raise ValueError("a noised count needs count_stddev > 0 when noise_multiplier > 0")
    rest = noise_multiplier**-2 - (2.0 * count_stddev) ** -2
    if rest <= 0.0:
        raise ValueError(
            f"count_stddev {count_stddev:g} is too small for noise_multiplier "
            f"{noise_multiplier:g}: it needs count_stddev > noise_multiplier / 2"
        )
    return rest**-0.5


def adaptive_clip_norm(
    clip_norm: float,
    *,
    unclipped: int,
    replies: int,
    expected: float,
    count_noise: float,
    target_quantile: float,
    learning_rate: float,
) -> float:
    """The next clip norm (Andrew et al. 2021, geometric update): C · exp(−η_C · (b̃ − γ)),
    with b̃ = (Σ_i (b_i − 1/2) + count_noise) / expected + 1/2 the noised fraction of the
    ``replies`` updates within C (b_i = 1 for those, ``unclipped`` of them), γ the target
    quantile. Centring b_i makes the count's sensitivity 1/2, and ``expected`` (the
    expected number of replies, public) keeps the actual count out of the release.

    >>> round(adaptive_clip_norm(1.0, unclipped=3, replies=4, expected=4.0, count_noise=0.0,
    ...                          target_quantile=0.5, learning_rate=0.2), 6)
    0.951229
    """
    if expected <= 0.0:
        return clip_norm
    fraction = (unclipped - replies / 2.0 + count_noise) / expected + 0.5
    return clip_norm * math.exp(-learning_rate * (fraction - target_quantile))
