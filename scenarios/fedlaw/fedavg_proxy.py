"""FedAvg given FedLAW's proxy set: the weighted mean, then fine-tuned on the proxy set.

FedLAW (Li et al., ICML 2023, https://arxiv.org/abs/2302.10911) learns its aggregation
weights on a small class-balanced set the server holds, which FedAvg never sees. Comparing
the two alone cannot tell the method's gain from the proxy data's. This baseline gets the
same proxy set (fedsim carves it exactly as for FedLAW: same seed, ``proxy_per_class``,
``proxy_source``, so both are evaluated on the same test examples) and spends the same
number of passes over it, ``server_epochs``, fine-tuning the FedAvg model directly with
plain SGD (``server_lr``, batches of ``batch_size``, reshuffled each pass from the seeded
stream ``("fedavg-proxy", round)``). Buffers (BatchNorm statistics) are the previous global
model's, updated by the train-mode passes, as FedLAW's server does.

    [strategy]
    name = "fedavg_proxy.py:FedAvgProxy"     # relative to the scenario file
    server_epochs = 20
    server_lr = 0.08
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedsim.arrays import Layout
from fedsim.seeding import torch_generator
from fedsim.strategies.base import ServerUpdateStrategy
from fedsim.strategies.fedlaw import ModelSplit, ServerModel, size_weights


def fine_tune(
    model: torch.nn.Module,
    split: ModelSplit,
    vector: torch.Tensor,
    buffers: dict[str, torch.Tensor],
    proxy: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """``vector``'s parameters after ``epochs`` SGD passes over ``proxy``; its buffer
    entries replaced by ``buffers`` as the train-mode passes left them."""
    params = {
        name: piece.detach().clone().requires_grad_(True)
        for name, piece in split.parameters(vector).items()
    }
    state = {name: tensor.clone() for name, tensor in buffers.items()}
    x, y = proxy
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator).to(y.device)
        for batch in torch.split(order, batch_size):
            loss = F.cross_entropy(
                functional_call(model, {**params, **state}, (x[batch],)), y[batch]
            )
            grads = torch.autograd.grad(loss, list(params.values()))
            with torch.no_grad():
                for tensor, grad in zip(params.values(), grads, strict=True):
                    tensor -= lr * grad
    pieces = [
        (params[name] if is_param else state[name]).detach().reshape(-1).to(vector.dtype)
        for name, is_param in zip(split.names, split.is_parameter, strict=True)
    ]
    return torch.cat(pieces)


class FedAvgProxy(ServerUpdateStrategy):
    """FedAvg's example-weighted mean, fine-tuned every round on the server's proxy set."""

    def __init__(
        self,
        *,
        server_epochs: int = 20,
        server_lr: float = 0.08,
        batch_size: int = 128,
        model_factory: Callable[[], torch.nn.Module] | None = None,
        proxy_data: tuple[np.ndarray, np.ndarray] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if model_factory is None or proxy_data is None:
            raise ValueError("FedAvgProxy needs the run's model and a proxy set")
        if (
            isinstance(server_epochs, bool)
            or not isinstance(server_epochs, int)
            or server_epochs < 0
        ):
            raise ValueError(f"server_epochs must be an integer >= 0, got {server_epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not float(server_lr) > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr!r}")
        self.server_epochs, self.server_lr, self.batch_size = (
            server_epochs,
            float(server_lr),
            batch_size,
        )
        x, y = (np.asarray(part) for part in proxy_data)
        self.proxy = (
            torch.tensor(x.astype(np.float32), device=self.device),
            torch.tensor(y.astype(np.int64), device=self.device),
        )
        self._server_model = ServerModel(model_factory, self.device)

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
        assert self._global is not None
        model, split = self._server_model.of(Layout.of(self._global))
        weights = torch.as_tensor(
            size_weights(num_examples), dtype=client_vectors.dtype, device=self.device
        )
        mean = weights @ client_vectors
        return fine_tune(
            model,
            split,
            mean,
            split.buffers(global_vector),
            self.proxy,
            epochs=self.server_epochs,
            lr=self.server_lr,
            batch_size=self.batch_size,
            generator=torch_generator(self.seed, "fedavg-proxy", server_round),
        )
