"""L-DAWA: layer-wise divergence-aware weight aggregation, written as a fedsim plugin.

Rehman et al., "L-DAWA: Layer-wise Divergence Aware Weight Aggregation in
Federated Self-Supervised Visual Representation Learning", ICCV 2023,
https://arxiv.org/abs/2307.07393; reference code github.com/yasar-rehman/L-DAWA
(``L-DAWA-Agg.py``, a Flower strategy).

For every layer l (every named array of the model) and every client n whose
reply arrived (S_t), δ_n^l = cos(w_n^l, x^l) is the cosine similarity between
the client's layer and the current global layer, and

    x^l ← (1/|S_t|) Σ_{n∈S_t} δ_n^l · w_n^l          (normalise = "count", the default)
    x^l ← Σ_{n∈S_t} δ_n^l · w_n^l / Σ_{n∈S_t} δ_n^l  (normalise = "similarity")

Public ports differ on the denominator: the reference code divides by the
number of clients, so a layer that drifted from the global one shrinks towards
zero; dividing by Σδ instead makes the weights a convex combination. As in the
reference, δ is clipped at 1 (rounding can push it over), scalar arrays
(e.g. BatchNorm's ``num_batches_tracked``) are averaged unscaled, and a layer
whose client or global norm is zero is not scaled (δ = 1: the reference would
divide by zero there). With ``normalise = "similarity"`` a layer whose δ sum to
(almost) zero falls back to dividing by |S_t|.

This file uses only fedsim's public API; it is loaded by path from a scenario
(``name = "../strategies/ldawa.py:LDAWA"``, see scenarios/ldawa.toml). After each
aggregation ``client_metrics`` holds each client's mean δ over the scaled layers
(``ldawa_cos``, phase ``server`` in the results).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedsim.arrays import Layout
from fedsim.strategies.base import ServerUpdateStrategy

NORMALISATIONS = ("count", "similarity")
COSINE_METRIC = "ldawa_cos"
_TINY = 1e-12


@dataclass(frozen=True)
class Segment:
    """One layer's slice of the flat model vector; ``scaled`` is False for scalars."""

    start: int
    stop: int
    scaled: bool


def segments_of(arrays: ArrayRecord) -> list[Segment]:
    """The layers of a record, in record (and flat vector) order.

    >>> import numpy as np
    >>> from flwr.app import Array
    >>> record = ArrayRecord({"w": Array(np.ones((2, 2), np.float32)),
    ...                       "n": Array(np.array(3, dtype=np.int64))})
    >>> segments_of(record)
    [Segment(start=0, stop=4, scaled=True), Segment(start=4, stop=5, scaled=False)]
    """
    layout = Layout.of(arrays)
    return [
        Segment(start, stop, scaled=len(shape) > 0)
        for (start, stop), shape in zip(layout.bounds, layout.shapes, strict=True)
    ]


def layer_cosines(
    global_vector: torch.Tensor, client_vectors: torch.Tensor, segments: Iterable[Segment]
) -> torch.Tensor:
    """δ: a (clients, layers) tensor of cos(w_n^l, x^l), clipped at 1; 1 for unscaled layers.

    >>> x = torch.tensor([1.0, 0.0, 2.0])
    >>> w = torch.tensor([[1.0, 1.0, 2.0], [0.0, 0.0, -1.0]])
    >>> layer_cosines(x, w, [Segment(0, 2, True), Segment(2, 3, True)])
    tensor([[ 0.7071,  1.0000],
            [ 1.0000, -1.0000]])
    """
    columns = []
    for segment in segments:
        clients = client_vectors[:, segment.start : segment.stop]
        if not segment.scaled:
            columns.append(torch.ones(clients.shape[0], dtype=clients.dtype, device=clients.device))
            continue
        layer = global_vector[segment.start : segment.stop]
        norms = torch.linalg.vector_norm(clients, dim=1) * torch.linalg.vector_norm(layer)
        cosine = (clients @ layer) / torch.where(norms > 0, norms, torch.ones_like(norms))
        columns.append(torch.where(norms > 0, cosine.clamp(max=1.0), torch.ones_like(cosine)))
    return torch.stack(columns, dim=1)


def ldawa_aggregate(
    global_vector: torch.Tensor,
    client_vectors: torch.Tensor,
    segments: list[Segment],
    *,
    normalise: str = "count",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The new global vector and δ (clients × layers).

    >>> x = torch.tensor([1.0, 0.0, 2.0])
    >>> w = torch.tensor([[1.0, 1.0, 2.0], [0.0, 0.0, -1.0]])
    >>> new, delta = ldawa_aggregate(x, w, [Segment(0, 2, True), Segment(2, 3, True)])
    >>> [round(v, 4) for v in new.tolist()]
    [0.3536, 0.3536, 1.5]
    """
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
    delta = layer_cosines(global_vector, client_vectors, segments)
    count = client_vectors.shape[0]
    parts = []
    for index, segment in enumerate(segments):
        weights = delta[:, index]
        denominator = torch.tensor(float(count), dtype=weights.dtype, device=weights.device)
        if normalise == "similarity":
            total = weights.sum()
            denominator = torch.where(total.abs() > _TINY, total, denominator)
        parts.append(weights @ client_vectors[:, segment.start : segment.stop] / denominator)
    return torch.cat(parts), delta


class LDAWA(ServerUpdateStrategy):
    """L-DAWA as a Flower strategy: layer-wise cosine-scaled averaging of client models.

    Options (``[strategy]`` table): ``normalise`` (``"count"``: divide by |S_t|, the
    default and the reference code's; ``"similarity"``: divide by Σ_n δ_n^l), plus
    Flower FedAvg's ``fraction_train``, ``fraction_evaluate`` and ``min_*_nodes``.
    """

    def __init__(self, *, normalise: str = "count", **options: Any) -> None:
        super().__init__(**options)
        if normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
        self.normalise = normalise
        self.segments: list[Segment] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the model's layers, then send it out as FedAvg does."""
        self.segments = segments_of(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def server_update(
        self,
        server_round: int,
        global_vector: torch.Tensor,
        client_vectors: torch.Tensor,
        node_ids: list[int],
        num_examples: np.ndarray,
    ) -> torch.Tensor | None:
        if not node_ids:
            return None
        new_vector, delta = ldawa_aggregate(
            global_vector, client_vectors, self.segments, normalise=self.normalise
        )
        scaled = [i for i, segment in enumerate(self.segments) if segment.scaled]
        mean_delta = delta[:, scaled].mean(dim=1) if scaled else delta.mean(dim=1)
        self.client_metrics = {
            node: {COSINE_METRIC: float(value)}
            for node, value in zip(node_ids, mean_delta.tolist(), strict=True)
        }
        return new_vector
