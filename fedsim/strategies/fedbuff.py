"""FedBuff — buffered asynchronous aggregation (Nguyen et al., AISTATS 2022,
https://arxiv.org/abs/2106.06639, Algorithm 1).

Up to ``concurrency`` clients train at once, each on the model version it
received. The server adds each arriving update, scaled by its staleness weight
s(τ) = 1/√(1 + τ) (``staleness = "polynomial"``, exponent 0.5, the paper's
choice), to a buffer; after ``buffer_size`` = K arrivals it applies

    x ← x + η_g · (1/K) · Σ_{i in buffer} s(τ_i) · Δ_i,   Δ_i = y_i − x_{v_i},

with x_{v_i} the version client i trained from, and empties the buffer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.strategies.asynchronous import AsyncStrategy, Model, combine


def fedbuff_update(x: Model, buffer: list[tuple[float, Model]], server_lr: float) -> Model:
    """x + η_g · mean over the buffer of s_i · Δ_i (``buffer``: (s_i, Δ_i) pairs).

    >>> x = {"w": np.array([1.0])}
    >>> fedbuff_update(x, [(1.0, {"w": np.array([2.0])}), (0.5, {"w": np.array([4.0])})], 1.0)
    {'w': array([3.])}
    """
    k = len(buffer)
    return combine([(1.0, x), *((server_lr * s / k, delta) for s, delta in buffer)], x)


class FedBuff(AsyncStrategy):
    """FedBuff: a buffer of K staleness-weighted updates, then one server step."""

    def __init__(
        self,
        *,
        buffer_size: int = 10,
        server_lr: float = 1.0,
        concurrency: int = 10,
        staleness: str = "polynomial",
        staleness_exponent: float = 0.5,
        staleness_cutoff: int = 4,
    ) -> None:
        super().__init__(
            concurrency=concurrency,
            staleness=staleness,
            staleness_exponent=staleness_exponent,
            staleness_cutoff=staleness_cutoff,
        )
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be an integer >= 1, got {buffer_size!r}")
        self.buffer_size = buffer_size
        self.server_lr = float(server_lr)
        self.buffer: list[tuple[float, Model]] = []

    def receive(self, x: Model, reply: Model, base: Model, tau: int, examples: int) -> Model | None:
        delta = {k: reply[k].astype(np.float64) - base[k].astype(np.float64) for k in x}
        self.buffer.append((self.weight(tau), delta))
        if len(self.buffer) < self.buffer_size:
            return None
        new = fedbuff_update(x, self.buffer, self.server_lr)
        self.buffer = []
        return new

    def own_state(self) -> dict[str, Any]:
        return {"buffer": [[s, dict(d)] for s, d in self.buffer]}

    def load_own_state(self, state: dict[str, Any]) -> None:
        self.buffer = [
            (float(s), {k: np.asarray(v) for k, v in d.items()}) for s, d in state["buffer"]
        ]
