"""FedAsync — asynchronous federated optimisation (Xie, Koyejo & Gupta, 2019,
https://arxiv.org/abs/1903.03934, Algorithm 1 with adaptive mixing).

Every arrival is mixed into the server model at once:

    x ← (1 − α_τ) · x + α_τ · y,   α_τ = α · s(τ),

y the client's model, trained from the version it received, τ its staleness and
s the staleness function (``polynomial`` (1 + τ)^(−a), the default with a = 0.5;
``hinge``; ``constant``). ``concurrency`` clients train at once.
"""

from __future__ import annotations

from fedsim.strategies.asynchronous import AsyncStrategy, Model, combine


def fedasync_update(x: Model, y: Model, alpha: float) -> Model:
    """(1 − α) x + α y.

    >>> import numpy as np
    >>> fedasync_update({"w": np.array([0.0])}, {"w": np.array([4.0])}, 0.25)
    {'w': array([1.])}
    """
    return combine([(1.0 - alpha, x), (alpha, y)], x)


class FedAsync(AsyncStrategy):
    """FedAsync: every arriving model is mixed in with weight α · s(τ)."""

    def __init__(
        self,
        *,
        mixing: float = 0.6,
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
        if not 0 < mixing <= 1:
            raise ValueError(f"mixing must be in (0, 1], got {mixing!r}")
        self.mixing = float(mixing)

    def receive(self, x: Model, reply: Model, base: Model, tau: int, examples: int) -> Model | None:
        return fedasync_update(x, reply, self.mixing * self.weight(tau))
