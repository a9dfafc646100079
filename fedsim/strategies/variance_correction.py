"""Variance-corrected model averaging: the math, on flat model vectors.

Tian, Al-Ars, Kitsak and Hofstee, "Vanishing Variance Problem in Fully
Decentralized Neural-Network Systems", 2024, https://arxiv.org/abs/2404.04616
(reference code: github.com/twoentartian/DFL_torch, py_src/model_variance_correct.py).

Averaging K uncorrelated weight tensors divides their variance by about K, and
the averaged model loses the variance Xavier initialisation set up, which
stalls gossip learning. At a node with own model s and received models
r_1..r_K, for every parameter tensor (weights, biases, norm affine — not
BatchNorm running statistics, and not tensors with a single element):

    avg    = (1/K) Σ_k r_k
    merged = β·s + (1 − β)·avg
    target = (1/K) Σ_k Var(r_k)
    merged ← (merged − mean(merged)) · sqrt((target + ε)/(Var(merged) + ε)) + mean(merged)

with ε = 1e-4. Var is the unbiased (n − 1) variance, as ``torch.var`` in the
reference code. BatchNorm running statistics (names ending in
``running_mean``, ``running_var``, ``num_batches_tracked``) are neither averaged
nor corrected: the node keeps its own, as the reference does.

Models are rows of one ``(nodes, parameters)`` tensor (see
:mod:`fedsim.arrays`); :class:`Segments` says which columns form which tensor.
The statistics are computed per tensor, vectorised across all rows at once — a
loop over the few tensors of a model, never over nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedsim.arrays import Layout

EPSILON = 1e-4
RUNNING_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def is_running_statistic(name: str) -> bool:
    """Whether a state-dict entry is a BatchNorm running statistic (kept local).

    >>> is_running_statistic("bn1.running_var"), is_running_statistic("bn1.weight")
    (True, False)
    """
    return name.endswith(RUNNING_STATISTICS)


@dataclass(frozen=True)
class Segments:
    """The tensors of a flat model vector: names and ``[start, stop)`` column ranges.

    >>> segments = Segments.of(["w", "b", "bn.running_mean"], [4, 1, 2])
    >>> segments.bounds, segments.corrected, segments.local_bounds
    (((0, 4), (4, 5), (5, 7)), (0,), ((5, 7),))
    >>> segments.mixed_columns().tolist()
    [True, True, True, True, True, False, False]
    """

    names: tuple[str, ...]
    bounds: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, names: Sequence[str], sizes: Sequence[int]) -> Segments:
        """Segments of tensors laid out one after the other, in order."""
        if len(names) != len(sizes):
            raise ValueError(f"{len(names)} names for {len(sizes)} sizes")
        bounds = Layout(tuple(names), tuple((int(s),) for s in sizes), ()).bounds
        return cls(tuple(names), bounds)

    @classmethod
    def of_layout(cls, layout: Layout) -> Segments:
        """The segments of a model's :class:`~fedsim.arrays.Layout`."""
        return cls(layout.names, layout.bounds)

    @property
    def size(self) -> int:
        """Columns in all: the length of a model vector."""
        return self.bounds[-1][1] if self.bounds else 0

    @property
    def corrected(self) -> tuple[int, ...]:
        """Indices of the tensors the correction applies to (≥ 2 elements, not running stats)."""
        return tuple(
            i
            for i, (name, (start, stop)) in enumerate(zip(self.names, self.bounds, strict=True))
            if stop - start > 1 and not is_running_statistic(name)
        )

    @property
    def local_bounds(self) -> tuple[tuple[int, int], ...]:
        """Column ranges of the running statistics (each node keeps its own)."""
        return tuple(
            bounds
            for name, bounds in zip(self.names, self.bounds, strict=True)
            if is_running_statistic(name)
        )

    def mixed_columns(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """``(P,)`` bool: the columns that are averaged (everything but running statistics)."""
        mask = torch.ones(self.size, dtype=torch.bool, device=device)
        for name, (start, stop) in zip(self.names, self.bounds, strict=True):
            if is_running_statistic(name):
                mask[start:stop] = False
        return mask


def segment_variances(vectors: torch.Tensor, segments: Segments) -> torch.Tensor:
    """``(M, S)``: the unbiased variance of every tensor of every row (0 for 1 element).

    >>> segments = Segments.of(["w", "b"], [3, 1])
    >>> segment_variances(torch.tensor([[1.0, 2.0, 3.0, 7.0]]), segments).tolist()
    [[1.0, 0.0]]
    """
    out = torch.zeros(
        (vectors.shape[0], len(segments.bounds)), dtype=vectors.dtype, device=vectors.device
    )
    for i, (start, stop) in enumerate(segments.bounds):
        if stop - start > 1:
            out[:, i] = vectors[:, start:stop].var(dim=1)
    return out


def rescale_to_variance(
    vectors: torch.Tensor,
    segments: Segments,
    target: torch.Tensor,
    epsilon: float = EPSILON,
) -> torch.Tensor:
    """Rescale each corrected tensor of each row about its mean towards variance ``target``.

    ``target`` is ``(M, S)``; tensors not in ``segments.corrected`` are returned
    unchanged. With ε = 0 the new variance equals the target exactly.

    >>> segments = Segments.of(["w"], [2])
    >>> rescale_to_variance(torch.tensor([[1.0, 3.0]]), segments, torch.tensor([[8.0]]), 0.0)
    tensor([[0., 4.]])
    """
    out = vectors.clone()
    for i in segments.corrected:
        start, stop = segments.bounds[i]
        block = out[:, start:stop]
        variance, mean = torch.var_mean(block, dim=1, keepdim=True)
        scale = torch.sqrt((target[:, i : i + 1] + epsilon) / (variance + epsilon))
        # (x − mean)·scale + mean = x·scale + mean·(1 − scale), in place on the copy.
        block.mul_(scale).add_(mean * (1.0 - scale))
    return out


def neighbour_average(
    own: torch.Tensor, received: torch.Tensor, segments: Segments, *, beta: float = 0.0
) -> torch.Tensor:
    """β·own + (1 − β)·mean(received), keeping ``own``'s running statistics (plain gossip).

    >>> segments = Segments.of(["w", "bn.running_mean"], [2, 1])
    >>> received = torch.tensor([[2.0, 0.0, 5.0], [4.0, 2.0, 5.0]])
    >>> neighbour_average(torch.tensor([1.0, 1.0, 9.0]), received, segments, beta=0.5).tolist()
    [2.0, 1.0, 9.0]
    """
    merged = beta * own + (1.0 - beta) * received.mean(dim=0)
    return torch.where(segments.mixed_columns(own.device), merged, own)


def corrected_average(
    own: torch.Tensor,
    received: torch.Tensor,
    segments: Segments,
    *,
    beta: float = 0.0,
    epsilon: float = EPSILON,
) -> torch.Tensor:
    """One node's variance-corrected merge of ``received`` (K × P) into ``own`` (P).

    >>> segments = Segments.of(["w"], [2])
    >>> received = torch.tensor([[0.0, 1.0], [0.0, 7.0]])  # variances 0.5 and 24.5: target 12.5
    >>> corrected_average(torch.zeros(2), received, segments, epsilon=0.0).tolist()
    [-0.5, 4.5]
    """
    merged = neighbour_average(own, received, segments, beta=beta)
    target = segment_variances(received, segments).mean(dim=0, keepdim=True)
    return rescale_to_variance(merged.unsqueeze(0), segments, target, epsilon)[0]
