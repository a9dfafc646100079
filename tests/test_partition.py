"""Partition schemes: sizes, coverage, label mixes, the reference codes' cut rules, seeding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.data.partition import (
    PARTITION_SCHEMES,
    chunk_ends,
    class_balanced_indices,
    cut_label,
    holdout_size,
    label_counts,
    label_distribution,
    partition_indices,
    per_label_ends,
    split_each,
)
from fedsim.seeding import rng


def check_partition(parts: list[np.ndarray], n: int) -> None:
    """Sorted int64 arrays, pairwise disjoint, together exactly 0..n-1."""
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)
    joined = np.concatenate(parts)
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))


def balanced_labels(num_classes: int, per_class: int) -> np.ndarray:
    return np.tile(np.arange(num_classes), per_class)


# --- iid ----------------------------------------------------------------------------------


def test_iid_sizes_differ_by_at_most_one() -> None:
    parts = partition_indices(np.zeros(103, dtype=np.int64), 10, "iid", rng=rng(0, "p"))
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    check_partition(parts, 103)


def test_iid_label_mix_is_close_to_uniform() -> None:
    labels = balanced_labels(10, 1000)
    dist = label_distribution(labels, partition_indices(labels, 10, "iid", rng=rng(1, "p")), 10)
    assert np.abs(dist - 0.1).max() < 0.05  # 5 standard deviations of a 1000-draw share


def test_more_clients_than_examples_leaves_some_empty() -> None:
    parts = partition_indices(np.array([0, 1, 2]), 5, "iid", rng=rng(0, "p"))
    assert sorted(len(p) for p in parts) == [0, 0, 1, 1, 1]
    check_partition(parts, 3)


# --- shards -------------------------------------------------------------------------------


def test_shards_aligned_with_labels_give_at_most_shards_per_client_labels() -> None:
    labels = balanced_labels(10, 20)  # 200 examples, 20 shards of 10, one label each
    parts = partition_indices(labels, 10, "shards", rng=rng(3, "p"), shards_per_client=2)
    check_partition(parts, 200)
    assert [len(p) for p in parts] == [20] * 10
    for part in parts:
        assert len(np.unique(labels[part])) <= 2
        # each label appears in multiples of a whole shard
        assert all(count % 10 == 0 for count in np.bincount(labels[part]))


def test_shards_unaligned_span_at_most_twice_as_many_labels() -> None:
    labels = rng(0, "labels").integers(0, 10, 997)
    parts = partition_indices(labels, 7, "shards", rng=rng(4, "p"), shards_per_client=3)
    check_partition(parts, 997)
    assert all(len(np.unique(labels[p])) <= 6 for p in parts)
    assert {len(p) for p in parts} <= {142, 143, 144}  # 21 shards of 47 or 48


def test_shards_need_enough_examples() -> None:
    with pytest.raises(ValueError) as error:
        partition_indices(np.zeros(5, dtype=np.int64), 3, "shards", rng=rng(0, "p"))
    assert str(error.value) == (
        "shards: num_clients * shards_per_client = 6 shards need at least that many examples "
        "and shards_per_client >= 1; there are 5 examples"
    )


# --- dirichlet: the cut rules of the reference codes ---------------------------------------


def fedau_reference_ends(label_sizes: list[int], mix: np.ndarray) -> np.ndarray:
    """IBM/fedau util/util.py:partition, its index arithmetic transcribed (clients x labels)."""
    sum_prob_per_label = np.sum(mix, axis=0)
    ends = np.zeros(mix.shape, dtype=np.int64)
    for n in range(mix.shape[0]):
        for i, size in enumerate(label_sizes):
            ends[n, i] = int(np.round(size * np.sum(mix[: n + 1, i]) / sum_prob_per_label[i]))
    return ends


def fedlaw_reference_ends(label_sizes: list[int], partition: np.ndarray) -> np.ndarray:
    """FedLAW datasets.py:build_non_iid_by_dirichlet_new, slice ends actually taken."""
    counts = np.array(
        [
            [round(float(p) * size) for p, size in zip(row, label_sizes, strict=True)]
            for row in partition
        ]
    )
    index = counts.copy()
    for i in range(len(counts)):
        for j in range(len(label_sizes)):
            if i == len(counts) - 1:
                index[i][j] = label_sizes[j]
            elif i > 0:
                index[i][j] = index[i - 1][j] + counts[i][j]
    return np.minimum(index, np.array(label_sizes))  # Python slices stop at the end


def test_chunk_ends_hand_computed() -> None:
    # cumsum = [0.1, 0.35, 0.4, 1.0] * 10 -> round(1, 3.5, 4, 10) = 1, 4 (half to even), 4, 10
    assert chunk_ends(10, np.array([0.1, 0.25, 0.05, 0.6])).tolist() == [1, 4, 4, 10]
    assert chunk_ends(7, np.array([1.0, 1.0])).tolist() == [4, 7]  # round(3.5) = 4
    assert chunk_ends(5, np.array([0.0, 0.0])).tolist() == [2, 5]  # all weights underflowed


@pytest.mark.parametrize("seed", range(5))
def test_chunk_ends_match_the_fedau_reference(seed: int) -> None:
    gen = np.random.default_rng(seed)
    sizes = [int(s) for s in gen.integers(0, 60, 4)]
    mix = gen.dirichlet(np.full(4, 0.3), size=9)
    expected = fedau_reference_ends(sizes, mix)
    ours = np.stack([chunk_ends(s, mix[:, c]) for c, s in enumerate(sizes)], axis=1)
    assert np.array_equal(ours, expected)


def test_per_label_ends_hand_computed() -> None:
    assert per_label_ends(10, np.array([0.45, 0.45, 0.1])).tolist() == [4, 8, 10]
    # rounded counts overshoot: 2 + 2 > 3, the slices are clipped, the last client gets none
    assert per_label_ends(3, np.array([0.5, 0.5, 0.0])).tolist() == [2, 3, 3]


@pytest.mark.parametrize("seed", range(5))
def test_per_label_ends_match_the_fedlaw_reference(seed: int) -> None:
    gen = np.random.default_rng(seed)
    sizes = [int(s) for s in gen.integers(0, 60, 4)]
    partition = gen.dirichlet(np.full(6, 0.2), size=4).T  # (clients, labels)
    expected = fedlaw_reference_ends(sizes, partition)
    ours = np.stack([per_label_ends(s, partition[:, c]) for c, s in enumerate(sizes)], axis=1)
    assert np.array_equal(ours, expected)


def test_cut_label_gives_consecutive_chunks() -> None:
    owner = np.full(6, -1)
    cut_label(np.array([5, 3, 1, 0, 2, 4]), np.array([1, 1, 4, 6]), owner)
    assert owner.tolist() == [2, 2, 3, 2, 3, 0]


@pytest.mark.parametrize("method", ["chunks", "per-label", "per-client"])
def test_dirichlet_covers_everything(method: str) -> None:
    labels = rng(0, "labels").integers(0, 10, 2000)
    parts = partition_indices(
        labels, 20, "dirichlet", rng=rng(1, "p"), alpha=0.5, dirichlet_method=method
    )
    assert len(parts) == 20
    check_partition(parts, 2000)


@pytest.mark.parametrize("method", ["chunks", "per-label", "per-client"])
def test_small_alpha_concentrates_labels_large_alpha_spreads_them(method: str) -> None:
    labels = balanced_labels(10, 500)

    def top_share(alpha: float) -> float:
        parts = partition_indices(
            labels, 10, "dirichlet", rng=rng(2, "p"), alpha=alpha, dirichlet_method=method
        )
        dist = label_distribution(labels, parts, 10)
        return float(dist.max(axis=1)[dist.sum(axis=1) > 0].mean())

    assert top_share(0.05) > 0.6
    assert top_share(1000.0) < 0.2


def test_chunks_follow_each_clients_drawn_label_mix() -> None:
    # With every label the same size, client n's share of label c is mix[n, c] / sum_k mix[k, c]:
    # rebuild that from the same stream and compare the counts up to rounding.
    labels = balanced_labels(4, 1000)
    parts = partition_indices(labels, 5, "dirichlet", rng=rng(9, "p"), alpha=0.3)
    gen = rng(9, "p")
    for _ in range(4):  # _chunks_owner shuffles each label first, then draws the mix
        gen.permutation(1000)
    mix = gen.dirichlet(np.full(4, 0.3), size=5)
    expected = 1000 * mix / mix.sum(axis=0)
    assert np.abs(label_counts(labels, parts, 4) - expected).max() <= 1.0


def test_per_client_gives_every_client_the_minimum() -> None:
    labels = balanced_labels(10, 100)
    parts = partition_indices(
        labels, 10, "dirichlet", rng=rng(5, "p"), alpha=0.2, dirichlet_method="per-client"
    )
    assert min(len(p) for p in parts) >= 10
    # the NIID-Bench balance cap: once at n / N = 100 a client receives no further label
    assert max(len(p) for p in parts) < 100 + 100


def test_per_client_gives_up_with_a_clear_error() -> None:
    with pytest.raises(ValueError) as error:
        partition_indices(
            np.zeros(20, dtype=np.int64),
            2,
            "dirichlet",
            rng=rng(0, "p"),
            alpha=0.001,
            dirichlet_method="per-client",
        )
    assert str(error.value) == (
        "dirichlet per-client: no draw in 1000 gave every one of 2 clients at least 10 examples "
        "(alpha = 0.001); raise alpha or lower num_clients"
    )


def test_unknown_scheme_and_method() -> None:
    with pytest.raises(ValueError, match="partition scheme must be one of iid, dirichlet"):
        partition_indices(np.zeros(4, dtype=np.int64), 2, "pathological", rng=rng(0, "p"))
    with pytest.raises(ValueError, match="dirichlet_method must be one of chunks, per-client"):
        partition_indices(
            np.zeros(4, dtype=np.int64), 2, "dirichlet", rng=rng(0, "p"), dirichlet_method="x"
        )


# --- natural ------------------------------------------------------------------------------


def test_natural_is_taken_as_given_and_sorted() -> None:
    natural = [np.array([3, 1]), np.array([0]), np.array([], dtype=np.int64)]
    parts = partition_indices(np.zeros(5, np.int64), 3, "natural", rng=rng(0, "p"), natural=natural)
    assert [p.tolist() for p in parts] == [[1, 3], [0], []]


@pytest.mark.parametrize(
    ("natural", "message"),
    [
        (None, "partition 'natural' needs a data set that defines its own clients"),
        ([np.array([0])], "the data set defines 1 clients but num_clients is 2"),
        ([np.array([0]), np.array([0, 1])], "natural partition: clients share examples"),
        ([np.array([0]), np.array([9])], r"natural partition indices must lie in \[0, 5\)"),
    ],
)
def test_natural_errors(natural: list[np.ndarray] | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        partition_indices(np.zeros(5, np.int64), 2, "natural", rng=rng(0, "p"), natural=natural)


# --- determinism and invariants -----------------------------------------------------------


@pytest.mark.parametrize("scheme", ["iid", "shards", "dirichlet"])
def test_same_seed_same_partition_other_seed_other_partition(scheme: str) -> None:
    labels = rng(0, "labels").integers(0, 10, 500)

    def parts(seed: int) -> list[list[int]]:
        return [p.tolist() for p in partition_indices(labels, 8, scheme, rng=rng(seed, "p"))]

    assert parts(1) == parts(1)
    assert parts(1) != parts(2)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 300),
    num_clients=st.integers(1, 12),
    num_classes=st.integers(1, 6),
    scheme=st.sampled_from(["iid", "dirichlet-chunks", "dirichlet-per-label", "shards"]),
    seed=st.integers(0, 1000),
)
def test_every_scheme_is_a_sorted_disjoint_cover(
    n: int, num_clients: int, num_classes: int, scheme: str, seed: int
) -> None:
    labels = np.random.default_rng(seed).integers(0, num_classes, n)
    name, _, method = scheme.partition("-")
    if name == "shards" and 2 * num_clients > n:
        return
    parts = partition_indices(
        labels, num_clients, name, rng=rng(seed, "p"), dirichlet_method=method or "chunks"
    )
    assert len(parts) == num_clients
    check_partition(parts, n)


def test_schemes_constant() -> None:
    assert PARTITION_SCHEMES == ("iid", "dirichlet", "shards", "natural")


# --- label statistics, per-client splits, balanced picks ----------------------------------


def test_label_counts_and_distribution_hand_computed() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    parts = [np.array([0, 1, 2]), np.array([3, 4, 5]), np.array([], dtype=np.int64)]
    assert label_counts(labels, parts, 4).tolist() == [[1, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0]]
    dist = label_distribution(labels, parts, 4)
    expected = np.array([[1, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0]]) / np.array([[3], [3], [1]])
    assert np.allclose(dist, expected)


def test_holdout_size_rounds_half_up_and_keeps_one() -> None:
    assert [holdout_size(n, 0.25) for n in (0, 1, 2, 3, 4, 10)] == [0, 0, 1, 1, 1, 3]
    assert holdout_size(5000, 0.2) == 1000
    assert holdout_size(2, 0.9) == 1


def test_split_each_sizes_and_cover() -> None:
    parts = [np.arange(10), np.array([20, 21]), np.array([30]), np.array([], dtype=np.int64)]
    train, test = split_each(parts, 0.25, rng(0, "s"))
    assert [len(t) for t in test] == [3, 1, 0, 0]  # 2.5 + .5 -> 3; 0.5 + .5 -> 1; 0.25 -> 0
    for part, tr, te in zip(parts, train, test, strict=True):
        assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)
        assert sorted(tr.tolist() + te.tolist()) == part.tolist()
    again = split_each(parts, 0.25, rng(0, "s"))
    other = split_each(parts, 0.25, rng(1, "s"))
    assert [t.tolist() for t in again[1]] == [t.tolist() for t in test]
    assert [t.tolist() for t in other[1]] != [t.tolist() for t in test]


def test_split_each_unsorted_input_and_zero_fraction() -> None:
    train, test = split_each([np.array([5, 2, 9])], 0.0, rng(0, "s"))
    assert train[0].tolist() == [2, 5, 9] and test[0].tolist() == []


def test_split_each_is_uniform_within_a_client() -> None:
    hits = np.zeros(10)
    for seed in range(400):
        _, test = split_each([np.arange(10)], 0.3, rng(seed, "s"))
        hits[test[0]] += 1
    assert np.abs(hits / 400 - 0.3).max() < 0.1


def test_class_balanced_indices() -> None:
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    chosen = class_balanced_indices(labels, 2, rng(0, "proxy"))
    assert np.all(np.diff(chosen) > 0)
    assert np.bincount(labels[chosen]).tolist() == [2, 1, 2]
