"""FedAvg with the three update rules of the FedAU paper's comparison.

McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629; the `all`
and `known-probability` rules are the baselines of Wang & Ji, ICLR 2024,
https://arxiv.org/abs/2306.03401.

    x ← x + η_g · Σ_{n∈S_t} w_n (y_n − x)

- ``participating``: w_n = m_n / Σ_{k∈S_t} m_k (m_n the client's example count,
  or 1 with ``uniform_weights``); with η_g = 1 this is Flower's FedAvg;
- ``all``: w_n = 1/N, unbiased for the all-client objective;
- ``known-probability``: w_n = 1/(N p_n), with p_n the true participation rate
  (an oracle: fedsim hands it over only to a strategy that asks for it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedsim.strategies.base import ServerUpdateStrategy

RULES = ("participating", "all", "known-probability")


def fedavg_weights(
    rule: str,
    num_examples: np.ndarray,
    *,
    num_clients: int | None = None,
    probabilities: np.ndarray | None = None,
    uniform_weights: bool = False,
) -> np.ndarray:
    """Per-reply weights w_n of one FedAvg round.

    >>> fedavg_weights("participating", np.array([1.0, 3.0])).tolist()
    [0.25, 0.75]
    >>> fedavg_weights("all", np.array([1.0, 3.0]), num_clients=4).tolist()
    [0.25, 0.25]
    >>> fedavg_weights("known-probability", np.array([1.0, 3.0]), num_clients=4,
    ...                probabilities=np.array([0.5, 0.25])).tolist()
    [0.5, 1.0]
    """
    count = len(num_examples)
    if count == 0:
        return np.zeros(0)
    if rule == "participating":
        mass = np.ones(count) if uniform_weights else np.asarray(num_examples, dtype=float)
        return mass / mass.sum()
    if num_clients is None:
        raise ValueError(f"rule {rule!r} needs num_clients")
    if rule == "all":
        return np.full(count, 1.0 / num_clients)
    if rule == "known-probability":
        if probabilities is None:
            raise ValueError("rule 'known-probability' needs the participation probabilities")
        return 1.0 / (num_clients * np.asarray(probabilities, dtype=float))
    raise ValueError(f"unknown FedAvg rule {rule!r}; expected one of {RULES}")


def weighted_server_update(
    global_vector: torch.Tensor,
    client_vectors: torch.Tensor,
    weights: np.ndarray,
    server_lr: float,
) -> torch.Tensor:
    """x + η_g Σ_n w_n (y_n − x), on whatever device the tensors live."""
    w = torch.as_tensor(weights, dtype=client_vectors.dtype, device=client_vectors.device)
    return global_vector + server_lr * (w @ (client_vectors - global_vector))


class FedAvg(ServerUpdateStrategy):
    """FedAvg with a server learning rate and a choice of weighting rule.

    Options (``[strategy]`` table): ``rule`` (``participating`` | ``all`` |
    ``known-probability``), ``server_lr`` (η_g, default 1), ``uniform_weights``
    (weight participants equally instead of by example count), plus Flower
    FedAvg's ``fraction_train``, ``fraction_evaluate``, ``min_*_nodes``.
    """

    def __init__(
        self,
        *,
        rule: str = "participating",
        server_lr: float = 1.0,
        uniform_weights: bool = False,
        participation_probabilities: Mapping[int, float] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if rule != "participating" and self.num_clients is None:
            raise ValueError(f"rule {rule!r} needs num_clients (all clients, not just those seen)")
        if rule == "known-probability" and participation_probabilities is None:
            raise ValueError("rule 'known-probability' needs participation_probabilities")
        self.rule = rule
        self.server_lr = server_lr
        self.uniform_weights = uniform_weights
        self.participation_probabilities = participation_probabilities

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
        probabilities = None
        if self.participation_probabilities is not None:
            probabilities = np.array([self.participation_probabilities[n] for n in node_ids])
        weights = fedavg_weights(
            self.rule,
            num_examples,
            num_clients=self.num_clients,
            probabilities=probabilities,
            uniform_weights=self.uniform_weights,
        )
        self.client_metrics = {
            n: {"weight": float(w)} for n, w in zip(node_ids, weights, strict=True)
        }
        return weighted_server_update(global_vector, client_vectors, weights, self.server_lr)
