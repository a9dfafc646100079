"""A scripted participation pattern: a regional outage.

Clients ``0 .. outage_clients - 1`` vanish between rounds ``first`` and ``last``
(inclusive); otherwise every client is up with probability ``p_up``, drawn from
the round's own generator so that the answer for a round never depends on what
was asked before. Used by ``script_example.toml`` (see
docs/scenario.md, "Scripts").
"""

from __future__ import annotations

import numpy as np


def outage(
    round: int,
    clients: np.ndarray,
    rng: np.random.Generator,
    first: int = 50,
    last: int = 80,
    outage_clients: int = 10,
    p_up: float = 0.5,
) -> np.ndarray:
    """Boolean mask of the clients reachable in ``round``.

    >>> mask = outage(60, np.arange(20), np.random.default_rng(0))
    >>> bool(mask[:10].any())
    False
    """
    up = rng.random(len(clients)) < p_up
    if first <= round <= last:
        up[clients < outage_clients] = False
    return up
