"""MIFA: every round, apply the mean of the latest update of every client.

Gu, Huang, Zhang and Liu, "Fast Federated Learning in the Presence of
Arbitrary Device Unavailability", NeurIPS 2021, https://arxiv.org/abs/2106.04159;
implemented as in the FedAU paper's comparison (github.com/IBM/fedau, main.py).

    D_n ← y_n − x for n ∈ S_t        (D_n = 0 before n's first reply)
    x ← x + η_g · (1/N) Σ_{n=1..N} D_n

Δ_n = y_n − x is relative to the global model client n trained from in this
round. The stored updates are one ``(N, parameters)`` tensor on the server
device. Like the reference code, a round in which nobody replied still applies
the mean of the stored updates (absent clients are represented by their
memory); only before anybody's first reply is the model left unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from fedsim.strategies.client_state import StoredUpdatesStrategy


class MIFA(StoredUpdatesStrategy):
    """MIFA with a server learning rate.

    Options (``[strategy]`` table): ``server_lr`` (η_g, default 1), plus Flower
    FedAvg's ``fraction_train``, ``fraction_evaluate``, ``min_*_nodes``.
    """

    def server_update(
        self,
        server_round: int,
        global_vector: torch.Tensor,
        client_vectors: torch.Tensor,
        node_ids: list[int],
        num_examples: np.ndarray,
    ) -> torch.Tensor | None:
        if node_ids:
            self.store.swap(node_ids, client_vectors - global_vector)
        if self.store.table is None:
            return None
        return global_vector + self.server_lr * self.store.mean_over_all(global_vector.numel())
