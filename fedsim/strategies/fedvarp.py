"""FedVARP: variance reduction for partial participation with stored client updates.

Jhunjhunwala, Sharma, Nagarkatti and Joshi, "FedVARP: Tackling the Variance Due
to Partial Client Participation in Federated Learning", UAI 2022,
https://arxiv.org/abs/2207.14130; implemented as in the FedAU paper's
comparison (github.com/IBM/fedau, main.py).

    v = (1/|S_t|) Σ_{n∈S_t} (Δ_n − Y_n) + (1/N) Σ_{n=1..N} Y_n
    Y_n ← Δ_n for n ∈ S_t;   x ← x + η_g · v

with Δ_n = y_n − x the update of client n from this round's global model and
Y_n its stored update (0 before its first reply); the second sum is taken over
the stored updates before this round's replies replace them. The stored
updates are one ``(N, parameters)`` tensor on the server device. A round in
which nobody replied leaves the model unchanged (as in the reference code).
"""

from __future__ import annotations

import numpy as np
import torch

from fedsim.strategies.client_state import StoredUpdatesStrategy


def fedvarp_direction(
    updates: torch.Tensor, previous: torch.Tensor, stored_mean: torch.Tensor
) -> torch.Tensor:
    """v = mean over the replies of (Δ_n − Y_n) + mean over all N of the stored Y.

    ``updates`` and ``previous`` are ``(replies, parameters)``; ``stored_mean`` is
    the mean over all N clients of the stored updates before this round.

    >>> fedvarp_direction(torch.tensor([[3.0], [1.0]]), torch.tensor([[1.0], [0.0]]),
    ...                   torch.tensor([0.25])).tolist()
    [1.75]
    """
    return (updates - previous).mean(dim=0) + stored_mean


class FedVARP(StoredUpdatesStrategy):
    """FedVARP with a server learning rate.

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
        if not node_ids:
            return None
        updates = client_vectors - global_vector
        stored_mean = self.store.mean_over_all(global_vector.numel())
        previous = self.store.swap(node_ids, updates)
        return global_vector + self.server_lr * fedvarp_direction(updates, previous, stored_mean)
