"""FedAvg with clipped client updates: the worked example of strategies/README.md.

Each client's update y_n − x is scaled down to L2 norm at most ``max_norm``
before the example-weighted average, which bounds how far any one client can
pull the global model (the aggregation step of DP-FedAvg without the noise:
McMahan et al., ICLR 2018, https://arxiv.org/abs/1710.06963).

    x ← x + Σ_n w_n · clip(y_n − x),   w_n = m_n / Σ_k m_k
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedsim.strategies.base import ServerUpdateStrategy


def clip_updates(updates: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Each row scaled to L2 norm at most ``max_norm``; shorter rows unchanged.

    >>> clip_updates(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0)
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])
    """
    norms = torch.linalg.vector_norm(updates, dim=1, keepdim=True)
    return updates * torch.clamp(max_norm / norms.clamp(min=1e-12), max=1.0)


class ClippedFedAvg(ServerUpdateStrategy):
    """FedAvg over clipped updates. Option: ``max_norm`` (default 1.0)."""

    def __init__(self, *, max_norm: float = 1.0, **options: Any) -> None:
        super().__init__(**options)
        if max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = max_norm

    def server_update(
        self,
        server_round: int,
        global_vector: torch.Tensor,
        client_vectors: torch.Tensor,
        node_ids: list[int],
        num_examples: np.ndarray,
    ) -> torch.Tensor | None:
        if not node_ids:
            return None  # nobody replied: keep the model
        updates = clip_updates(client_vectors - global_vector, self.max_norm)
        weights = torch.as_tensor(num_examples / num_examples.sum(), dtype=updates.dtype)
        return global_vector + weights.to(updates.device) @ updates
