"""Variance-corrected averaging pinned on hand-computed tensors (Tian et al. 2024)."""

from __future__ import annotations

import math

import pytest
import torch

from fedsim.strategies.variance_correction import (
    EPSILON,
    Segments,
    corrected_average,
    is_running_statistic,
    neighbour_average,
    rescale_to_variance,
    segment_variances,
)

# One model: a 4-element weight, a single-element bias, BatchNorm running statistics.
SEGMENTS = Segments.of(["w", "b", "bn.running_mean", "bn.num_batches_tracked"], [4, 1, 2, 1])
OWN = torch.tensor([0.0, 0.0, 0.0, 0.0, 10.0, 5.0, 5.0, 3.0], dtype=torch.float64)
RECEIVED = torch.tensor(
    [
        [1.0, 3.0, 1.0, 3.0, 2.0, 0.0, 0.0, 7.0],  # Var(w) = 4/3 (unbiased)
        [0.0, 0.0, 4.0, 4.0, 4.0, 1.0, 1.0, 9.0],  # Var(w) = 16/3
    ],
    dtype=torch.float64,
)
TARGET = (4 / 3 + 16 / 3) / 2  # 10/3: the mean variance of the received w


def unbiased_variance(values: torch.Tensor) -> float:
    mean = float(values.mean())
    return sum((float(v) - mean) ** 2 for v in values) / (len(values) - 1)


def test_segments_and_running_statistics() -> None:
    assert SEGMENTS.bounds == ((0, 4), (4, 5), (5, 7), (7, 8))
    assert SEGMENTS.corrected == (0,)  # b has one element, the rest are running statistics
    assert SEGMENTS.mixed_columns().tolist() == [True] * 5 + [False] * 3
    assert is_running_statistic("layer1.0.bn2.running_var")
    assert not is_running_statistic("running_mean_head.weight")
    with pytest.raises(ValueError, match="2 names for 1 sizes"):
        Segments.of(["a", "b"], [3])


def test_segment_variances_are_unbiased_and_zero_for_one_element() -> None:
    variances = segment_variances(RECEIVED, SEGMENTS)
    assert variances[:, 0].tolist() == pytest.approx([4 / 3, 16 / 3])
    assert variances[:, 1].tolist() == [0.0, 0.0]


def test_correction_hits_the_target_and_keeps_the_mean() -> None:
    # avg w = [0.5, 1.5, 2.5, 3.5]: mean 2, Var 5/3; with ε = 0 the scale is sqrt((10/3)/(5/3)).
    merged = corrected_average(OWN, RECEIVED, SEGMENTS, epsilon=0.0)
    scale = math.sqrt(2.0)
    expected_w = [2 + scale * d for d in (-1.5, -0.5, 0.5, 1.5)]
    assert merged[:4].tolist() == pytest.approx(expected_w)
    assert unbiased_variance(merged[:4]) == pytest.approx(TARGET)
    assert float(merged[:4].mean()) == pytest.approx(2.0)
    # The single-element bias is averaged but not rescaled: (2 + 4) / 2.
    assert float(merged[4]) == pytest.approx(3.0)
    # Running statistics are neither averaged nor corrected: the node keeps its own.
    assert merged[5:].tolist() == [5.0, 5.0, 3.0]


def test_conservative_beta_half() -> None:
    # merged w = 0.5·0 + 0.5·avg = [0.25, 0.75, 1.25, 1.75]: mean 1, Var 5/12;
    # the target stays the mean variance of the received models, 10/3: scale sqrt(8).
    merged = corrected_average(OWN, RECEIVED, SEGMENTS, beta=0.5, epsilon=0.0)
    expected_w = [1 + math.sqrt(8.0) * d for d in (-0.75, -0.25, 0.25, 0.75)]
    assert merged[:4].tolist() == pytest.approx(expected_w)
    assert unbiased_variance(merged[:4]) == pytest.approx(TARGET)
    assert float(merged[4]) == pytest.approx(0.5 * 10 + 0.5 * 3)
    assert merged[5:].tolist() == [5.0, 5.0, 3.0]


def test_epsilon_enters_numerator_and_denominator() -> None:
    # [1, 3]: mean 2, Var 2; target 8, ε = 1: scale sqrt((8 + 1)/(2 + 1)) = sqrt(3).
    segments = Segments.of(["w"], [2])
    out = rescale_to_variance(torch.tensor([[1.0, 3.0]]), segments, torch.tensor([[8.0]]), 1.0)
    assert out[0].tolist() == pytest.approx([2 - math.sqrt(3), 2 + math.sqrt(3)])
    assert EPSILON == 1e-4
    # The default ε barely moves the result: Var = (5/3)·(10/3 + ε)/(5/3 + ε).
    merged = corrected_average(OWN, RECEIVED, SEGMENTS)
    expected = (5 / 3) * (TARGET + EPSILON) / (5 / 3 + EPSILON)
    assert unbiased_variance(merged[:4]) == pytest.approx(expected, rel=1e-12)
    assert expected != pytest.approx(TARGET, rel=1e-6)


def test_plain_average_has_no_correction() -> None:
    merged = neighbour_average(OWN, RECEIVED, SEGMENTS)
    assert merged.tolist() == [0.5, 1.5, 2.5, 3.5, 3.0, 5.0, 5.0, 3.0]


def test_rescaling_is_row_wise_across_nodes() -> None:
    segments = Segments.of(["w", "v"], [3, 2])
    rows = torch.tensor([[0.0, 1.0, 2.0, 5.0, 7.0], [4.0, 4.0, 7.0, -1.0, 1.0]])
    target = torch.tensor([[4.0, 8.0], [27.0, 0.5]])
    out = rescale_to_variance(rows, segments, target, 0.0)
    for i in range(2):
        one = rescale_to_variance(rows[i : i + 1], segments, target[i : i + 1], 0.0)
        assert torch.equal(out[i], one[0])
    assert torch.allclose(segment_variances(out, segments), target)


def test_averaging_k_independent_tensors_divides_variance_by_k() -> None:
    # K = 8 independent N(0, 1) tensors of n = 20,000 elements: Var(avg) = 1/K. The
    # sample variance's relative standard error is sqrt(2/n) = 1%, so 5% is a 5-sigma bound.
    k, n = 8, 20_000
    generator = torch.Generator().manual_seed(1)
    received = torch.randn((k, n), generator=generator, dtype=torch.float64)
    segments = Segments.of(["w"], [n])
    plain = neighbour_average(torch.zeros(n, dtype=torch.float64), received, segments)
    assert float(plain.var()) == pytest.approx(1 / k, rel=0.05)
    corrected = corrected_average(torch.zeros(n, dtype=torch.float64), received, segments)
    target = float(segment_variances(received, segments).mean())
    assert target == pytest.approx(1.0, rel=0.05)
    assert float(corrected.var()) == pytest.approx(target, rel=1e-3)
