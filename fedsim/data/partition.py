"""Splitting a labelled training set across simulated clients.

Every scheme returns one sorted array of example indices per client; the arrays are disjoint
and, except for ``natural`` (taken as given), cover every example. The schemes:

- ``iid``: a random permutation cut into near-equal parts (sizes differ by at most one).
- ``shards``: McMahan et al. 2017 (https://arxiv.org/abs/1602.05629): sort by label, cut into
  ``num_clients * shards_per_client`` near-equal shards, give each client
  ``shards_per_client`` shards at random. A shard spans one label unless it straddles a label
  boundary, so a client holds at most ``2 * shards_per_client`` labels (usually
  ``shards_per_client``).
- ``dirichlet``: label skew controlled by ``alpha`` (small: few labels per client), with three
  methods from the reference code of the papers fedsim reproduces:

  * ``chunks`` -- FedAU (Wang & Ji 2024, https://arxiv.org/abs/2306.03401; github.com/IBM/fedau,
    ``util/util.py:partition``): every client draws a label distribution
    ``q_n ~ Dirichlet(alpha * 1_C)``; each label's examples (shuffled) are cut into consecutive
    chunks, client ``n`` getting the share ``q_n[c] / sum_k q_k[c]`` of label ``c`` (chunk ends
    ``round(n_c * cumsum / total)``, NumPy's half-to-even rounding, as the reference). Client
    sizes vary; no client is guaranteed any data.
  * ``per-label`` -- FedLAW (Li et al. 2023, https://arxiv.org/abs/2302.10911;
    github.com/ZexiLee/ICML-2023-FedLAW, ``datasets.py:build_non_iid_by_dirichlet_new``): for
    each label, proportions ``p ~ Dirichlet(alpha * 1_N)`` across clients; client ``n`` gets
    ``round(p_n * n_c)`` consecutive examples of the shuffled label, the last client the rest
    (a client whose chunk would start past the end gets none).
  * ``per-client`` -- the variant most papers use, from NIID-Bench (Li et al. 2022,
    https://arxiv.org/abs/2102.02079; github.com/Xtra-Computing/NIID-Bench, ``utils.py``,
    ``noniid-labeldir``): per label, ``p ~ Dirichlet(alpha * 1_N)``, zeroed for clients that
    already hold ``n / N`` examples or more and renormalised, cut points
    ``floor(cumsum(p) * n_c)``; the whole draw is repeated until every client holds at least
    ``min_size`` examples (10 in NIID-Bench; lowered to ``n // N`` when that is smaller).

- ``natural``: the data set's own clients (e.g. FedProx's Synthetic), checked and sorted.

All randomness comes from the ``rng`` argument (see :mod:`fedsim.seeding`), so a partition
depends only on the scenario seed. The work is vectorised over examples: 100 000 clients are
fine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PARTITION_SCHEMES = ("iid", "dirichlet", "shards", "natural")
DIRICHLET_METHODS = ("chunks", "per-client", "per-label")
MAX_DIRICHLET_ATTEMPTS = 1000


def holdout_size(n: int, fraction: float) -> int:
    """How many of ``n`` examples a ``fraction`` holds out: ``n * fraction`` rounded half up,
    but never all of them when ``n >= 1`` (the rest keeps at least one example).

    >>> holdout_size(10, 0.25), holdout_size(10, 0.2), holdout_size(1, 0.9), holdout_size(0, 0.5)
    (3, 2, 0, 0)
    """
    return int(holdout_sizes(np.asarray([n]), fraction)[0])


def holdout_sizes(sizes: np.ndarray, fraction: float) -> np.ndarray:
    """:func:`holdout_size` of every entry of ``sizes``.

    >>> holdout_sizes(np.array([0, 1, 2, 10]), 0.25).tolist()
    [0, 0, 1, 3]
    """
    wanted = np.floor(sizes * fraction + 0.5).astype(np.int64)
    return np.minimum(wanted, np.maximum(sizes - 1, 0))


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    *,
    rng: np.random.Generator,
    alpha: float = 0.5,
    dirichlet_method: str = "chunks",
    shards_per_client: int = 2,
    natural: Sequence[np.ndarray] | None = None,
    min_size: int = 10,
) -> list[np.ndarray]:
    """Example indices of each client: ``num_clients`` sorted, disjoint int64 arrays.

    ``labels`` are the training labels (ints in ``0..C-1``). ``alpha``, ``dirichlet_method``
    and ``min_size`` apply to ``dirichlet``, ``shards_per_client`` to ``shards``, ``natural``
    (one index array per client) to ``natural``. Raises ValueError when the scheme cannot
    produce ``num_clients`` parts from these labels.

    >>> labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    >>> parts = partition_indices(labels, 2, "iid", rng=np.random.default_rng(0))
    >>> [len(p) for p in parts], sorted(np.concatenate(parts).tolist()) == list(range(8))
    ([4, 4], True)
    """
    labels = _check_labels(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    n = len(labels)
    if scheme == "iid":
        owner = _iid_owner(n, num_clients, rng)
    elif scheme == "shards":
        owner = _shards_owner(labels, num_clients, shards_per_client, rng)
    elif scheme == "dirichlet":
        if not alpha > 0:
            raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
        if dirichlet_method == "chunks":
            owner = _chunks_owner(labels, num_clients, alpha, rng)
        elif dirichlet_method == "per-label":
            owner = _per_label_owner(labels, num_clients, alpha, rng)
        elif dirichlet_method == "per-client":
            owner = _per_client_owner(labels, num_clients, alpha, min_size, rng)
        else:
            raise ValueError(
                f"dirichlet_method must be one of {', '.join(DIRICHLET_METHODS)}, "
                f"got {dirichlet_method!r}"
            )
    elif scheme == "natural":
        return _natural_parts(n, num_clients, natural)
    else:
        raise ValueError(
            f"partition scheme must be one of {', '.join(PARTITION_SCHEMES)}, got {scheme!r}"
        )
    return parts_from_owner(owner, num_clients)


def parts_from_owner(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Group example indices by their owning client (owner[i] = client of example i).

    >>> [p.tolist() for p in parts_from_owner(np.array([1, 0, 1, 1]), 3)]
    [[1], [0, 2, 3], []]
    """
    order = np.argsort(owner, kind="stable").astype(np.int64)
    return split_sizes(order, np.bincount(owner, minlength=num_clients))


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(labels) and labels.min() < 0:
        raise ValueError("labels must be >= 0")
    return labels.astype(np.int64, copy=False)


def _num_labels(labels: np.ndarray) -> int:
    return int(labels.max()) + 1 if len(labels) else 0


def _iid_owner(n: int, num_clients: int, rng: np.random.Generator) -> np.ndarray:
    sizes = np.full(num_clients, n // num_clients)
    sizes[: n % num_clients] += 1
    owner = np.empty(n, dtype=np.int64)
    owner[rng.permutation(n)] = np.repeat(np.arange(num_clients), sizes)
    return owner


def _shards_owner(
    labels: np.ndarray, num_clients: int, per_client: int, rng: np.random.Generator
) -> np.ndarray:
    n = len(labels)
    num_shards = num_clients * per_client
    if per_client < 1 or num_shards > n:
        raise ValueError(
            f"shards: num_clients * shards_per_client = {num_shards} shards need at least "
            f"that many examples and shards_per_client >= 1; there are {n} examples"
        )
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shard_sizes = np.full(num_shards, n // num_shards)
    shard_sizes[: n % num_shards] += 1
    shard_of_position = np.repeat(np.arange(num_shards), shard_sizes)
    client_of_shard = np.empty(num_shards, dtype=np.int64)
    client_of_shard[rng.permutation(num_shards)] = np.arange(num_shards) // per_client
    owner = np.empty(n, dtype=np.int64)
    owner[by_label] = client_of_shard[shard_of_position]
    return owner


def cut_label(indices: np.ndarray, ends: np.ndarray, owner: np.ndarray) -> None:
    """Give ``indices[ends[k-1]:ends[k]]`` to client k (``ends`` nondecreasing, last = size).

    >>> owner = np.full(5, -1)
    >>> cut_label(np.array([4, 0, 2, 1, 3]), np.array([2, 2, 5]), owner)
    >>> owner.tolist()
    [0, 2, 2, 2, 0]
    """
    starts = np.concatenate([[0], ends[:-1]])
    owner[indices] = np.repeat(np.arange(len(ends)), ends - starts)


def chunk_ends(size: int, weights: np.ndarray) -> np.ndarray:
    """FedAU's chunk ends for one label: ``round(size * cumsum(weights) / sum(weights))``.

    >>> chunk_ends(10, np.array([0.1, 0.25, 0.05, 0.6])).tolist()
    [1, 4, 4, 10]
    """
    total = weights.sum()
    if not total > 0:  # every weight underflowed to 0 (tiny alpha): share the label evenly
        weights, total = np.ones_like(weights), float(len(weights))
    ends = np.round(size * np.cumsum(weights) / total).astype(np.int64)
    ends[-1] = size
    return ends


def _label_indices(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Each label's example indices, shuffled."""
    by_label = parts_from_owner(labels, _num_labels(labels))
    return [rng.permutation(indices) for indices in by_label]


def _chunks_owner(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    per_label = _label_indices(labels, rng)
    label_mix = rng.dirichlet(np.full(len(per_label), alpha), size=num_clients)  # (N, C)
    owner = np.empty(len(labels), dtype=np.int64)
    for c, indices in enumerate(per_label):
        cut_label(indices, chunk_ends(len(indices), label_mix[:, c]), owner)
    return owner


def per_label_ends(size: int, proportions: np.ndarray) -> np.ndarray:
    """FedLAW's chunk ends for one label: cumulated ``round(p_n * size)``, clipped, last = size.

    >>> per_label_ends(10, np.array([0.45, 0.45, 0.1])).tolist()
    [4, 8, 10]
    >>> per_label_ends(3, np.array([0.5, 0.5, 0.0])).tolist()
    [2, 3, 3]
    """
    ends = np.minimum(np.cumsum(np.round(proportions * size).astype(np.int64)), size)
    ends[-1] = size
    return ends


def _per_label_owner(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    per_label = _label_indices(labels, rng)
    proportions = rng.dirichlet(np.full(num_clients, alpha), size=len(per_label))  # (C, N)
    owner = np.empty(len(labels), dtype=np.int64)
    for c, indices in enumerate(per_label):
        cut_label(indices, per_label_ends(len(indices), proportions[c]), owner)
    return owner


def _per_client_owner(
    labels: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> np.ndarray:
    n = len(labels)
    required = min(min_size, n // num_clients)
    owner = np.empty(n, dtype=np.int64)
    for _ in range(MAX_DIRICHLET_ATTEMPTS):
        sizes = np.zeros(num_clients, dtype=np.int64)
        for indices in _label_indices(labels, rng):
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            if not len(indices):
                continue
            proportions = proportions * (sizes < n / num_clients)
            if not proportions.sum() > 0:  # every client still open drew 0 (tiny alpha)
                proportions = (sizes < n / num_clients).astype(float)
            proportions = proportions / proportions.sum()
            ends = (np.cumsum(proportions) * len(indices)).astype(np.int64)
            ends[-1] = len(indices)
            cut_label(indices, ends, owner)
            sizes += np.diff(np.concatenate([[0], ends]))
        if sizes.min() >= required:
            return owner
    raise ValueError(
        f"dirichlet per-client: no draw in {MAX_DIRICHLET_ATTEMPTS} gave every one of "
        f"{num_clients} clients at least {required} examples (alpha = {alpha}); raise alpha "
        "or lower num_clients"
    )


def _natural_parts(
    n: int, num_clients: int, natural: Sequence[np.ndarray] | None
) -> list[np.ndarray]:
    if natural is None:
        raise ValueError("partition 'natural' needs a data set that defines its own clients")
    if len(natural) != num_clients:
        raise ValueError(
            f"the data set defines {len(natural)} clients but num_clients is {num_clients}"
        )
    parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in natural]
    joined = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    if len(joined) and (joined.min() < 0 or joined.max() >= n):
        raise ValueError(f"natural partition indices must lie in [0, {n})")
    if len(np.unique(joined)) != len(joined):
        raise ValueError("natural partition: clients share examples")
    return parts


def label_counts(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Examples of each class held by each client: int64 (N, C).

    >>> label_counts(np.array([0, 1, 1, 2]), [np.array([0, 1]), np.array([2, 3])], 3).tolist()
    [[1, 1, 0], [0, 1, 1]]
    """
    labels = np.asarray(labels, dtype=np.int64)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    joined = np.concatenate(list(parts)) if len(parts) else np.empty(0, dtype=np.int64)
    client = np.repeat(np.arange(len(parts)), sizes)
    flat = client * num_classes + labels[joined.astype(np.int64)]
    return np.bincount(flat, minlength=len(parts) * num_classes).reshape(len(parts), num_classes)


def label_distribution(
    labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Each client's label distribution: float (N, C), rows sum to 1 (all 0 for no data).

    >>> label_distribution(np.array([0, 1, 1]), [np.array([0, 1, 2]), np.array([], int)], 2)
    array([[0.33333333, 0.66666667],
           [0.        , 0.        ]])
    """
    counts = label_counts(labels, parts, num_classes).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def split_each(
    parts: Sequence[np.ndarray], fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split every client's indices into (train, test) at random, ``holdout_size`` to test.

    Both lists keep each client's indices sorted; ``fraction = 0`` gives empty test parts.

    >>> train, test = split_each([np.arange(10), np.arange(10, 12)], 0.5, np.random.default_rng(1))
    >>> [len(t) for t in train], [len(t) for t in test]
    ([5, 1], [5, 1])
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    parts = [np.asarray(p, dtype=np.int64) for p in parts]
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    client = np.repeat(np.arange(len(parts)), sizes)
    joined = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    unsorted = np.diff(joined) <= 0
    if np.any(unsorted & (np.diff(client) == 0)):
        joined = joined[np.lexsort((joined, client))]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if len(parts) else sizes
    # A random rank of every example within its client: sort by client + a key in [0, 1).
    order = np.argsort(client + rng.random(len(joined)), kind="stable")
    rank = np.empty(len(joined), dtype=np.int64)
    rank[order] = np.arange(len(joined)) - starts[client[order]]
    is_test = rank < holdout_sizes(sizes, fraction)[client]
    train_sizes = np.bincount(client[~is_test], minlength=len(parts))
    return split_sizes(joined[~is_test], train_sizes), split_sizes(
        joined[is_test], sizes - train_sizes
    )


def split_sizes(array: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    """Consecutive pieces of ``array`` of the given sizes (a faster ``np.split``).

    >>> [p.tolist() for p in split_sizes(np.arange(5), np.array([2, 0, 3]))]
    [[0, 1], [], [2, 3, 4]]
    """
    ends = np.cumsum(sizes).tolist()
    starts = [0, *ends][:-1]
    return [array[start:end] for start, end in zip(starts, ends, strict=True)]


def class_balanced_indices(
    labels: np.ndarray, per_class: int, rng: np.random.Generator
) -> np.ndarray:
    """A sorted random pick of ``per_class`` indices of every class present (all, if fewer).

    >>> class_balanced_indices(np.array([0, 0, 0, 1, 2, 2]), 2, np.random.default_rng(0)).size
    5
    """
    picks = [
        rng.choice(indices, size=min(per_class, len(indices)), replace=False)
        for indices in parts_from_owner(_check_labels(labels), _num_labels(np.asarray(labels)))
        if len(indices)
    ]
    return np.sort(np.concatenate(picks)) if picks else np.empty(0, dtype=np.int64)
