"""FedAU: FedAvg with weights learned online from who replied, O(1) state per client.

Wang & Ji, "A Lightweight Method for Tackling Unknown Participation Statistics
in Federated Averaging", ICLR 2024, https://arxiv.org/abs/2306.03401
(reference code: github.com/IBM/fedau).

    x ← x + η_g · (1/N) · Σ_{n∈S_t} ω_n (y_n − x)

The sum divides by N, all clients. ω_n is the mean length of client n's
completed participation intervals (1 before the first one completes), an
estimate of 1/p_n from the participation history alone: the server never
reads p_n. Per client only ``gap`` (rounds since the last participation or
recorded interval), the interval count M and the sum of interval lengths are
kept, and ω = sum/M is exact. Each round t, for each client n:

- n replied: ω_n is read (it depends only on rounds before t), then the
  interval gap+1 is recorded and gap = 0;
- otherwise gap += 1, and when gap reaches the cutoff K an interval of length
  K is recorded and gap = 0 (K = ∞, the reference default, never cuts).

That eager form touches every client every round. :class:`FedAU` is lazy
instead, O(participants) per round: a client's statistics are brought up to
date only when it replies, by first accounting for the r rounds it was absent
since its last reply (:func:`skip_rounds`). Over r absent rounds the eager
form walks gap through g+1, g+2, …, g+r, recording an interval of length K and
subtracting K each time the value reaches K; so it records exactly
⌊(g+r)/K⌋ intervals of length K and ends at gap (g+r) mod K, which is the
closed form used. All quantities are integers, so lazy and eager agree
exactly, not just up to rounding. A round in which a client was reachable but
not sampled, or did not reply, counts as absence like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedsim import keys
from fedsim.strategies.base import ServerUpdateStrategy
from fedsim.strategies.client_state import ClientRows
from fedsim.strategies.fedavg import weighted_server_update


def parse_cutoff(value: object) -> int | None:
    """The cutoff K as an int ≥ 2, or ``None`` for K = ∞.

    ∞ may be written ``None``, ``"inf"`` or TOML's ``inf``. K = 1 is refused:
    every interval would have length 1, so ω ≡ 1 and FedAU would be FedAvg's
    ``all`` rule (use ``fedavg`` with ``rule = "all"`` for that).

    >>> parse_cutoff(50), parse_cutoff("inf"), parse_cutoff(float("inf")), parse_cutoff(None)
    (50, None, None, None)
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
        return None
    if isinstance(value, float) and math.isinf(value) and value > 0:
        return None
    if isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 2:
        return int(value)
    raise ValueError(
        f"cutoff must be an integer >= 2 or inf, got {value!r}"
        + (" (K = 1 makes every ω 1: that is fedavg with rule 'all')" if value == 1 else "")
    )


@dataclass(frozen=True)
class Intervals:
    """Participation-interval statistics of some clients (int64 arrays, one entry per client).

    ``gap``: rounds since the last participation or recorded interval; ``count``:
    completed intervals M; ``total``: sum of their lengths.
    """

    gap: np.ndarray
    count: np.ndarray
    total: np.ndarray

    @classmethod
    def start(cls, size: int) -> Intervals:
        """Statistics of ``size`` clients before round 1 (the strategy updates them in place)."""
        return cls(*(np.zeros(size, dtype=np.int64) for _ in range(3)))

    def take(self, rows: np.ndarray) -> Intervals:
        """The statistics of ``rows`` (a copy)."""
        return Intervals(self.gap[rows], self.count[rows], self.total[rows])

    def fields(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.gap, self.count, self.total


def omegas(stats: Intervals) -> np.ndarray:
    """ω: the mean completed interval, or 1 where none completed yet.

    >>> omegas(Intervals(np.array([0, 2]), np.array([0, 2]), np.array([0, 3]))).tolist()
    [1.0, 1.5]
    """
    safe = np.maximum(stats.count, 1)
    return np.where(stats.count > 0, stats.total / safe, 1.0)


def skip_rounds(stats: Intervals, rounds: np.ndarray, cutoff: int | None) -> Intervals:
    """The statistics after ``rounds`` (per client) rounds without participation.

    >>> s = skip_rounds(Intervals.start(1), np.array([7]), cutoff=3)
    >>> s.gap.tolist(), s.count.tolist(), s.total.tolist()
    ([1], [2], [6])
    """
    gap = stats.gap + rounds
    if cutoff is None:
        return Intervals(gap, stats.count.copy(), stats.total.copy())
    cuts = gap // cutoff
    return Intervals(gap % cutoff, stats.count + cuts, stats.total + cuts * cutoff)


def record_participation(stats: Intervals) -> Intervals:
    """The statistics after a participation: interval gap+1 recorded, gap = 0."""
    return Intervals(np.zeros_like(stats.gap), stats.count + 1, stats.total + stats.gap + 1)


def eager_round(
    stats: Intervals, participated: np.ndarray, cutoff: int | None
) -> tuple[np.ndarray, Intervals]:
    """One round of the eager form for every client: (ω of every client, new statistics).

    A literal transcription of the per-round rule (the lazy path's reference);
    ω is meaningful for the participants, whom it weights.

    >>> stats = Intervals.start(2)
    >>> for took_part in ([True, False], [False, False], [True, True]):
    ...     omega, stats = eager_round(stats, np.array(took_part), cutoff=None)
    >>> omega.tolist(), stats.count.tolist(), stats.total.tolist()
    ([1.0, 1.0], [2, 1], [3, 3])
    """
    participated = np.asarray(participated, dtype=bool)
    absent_gap = stats.gap + 1
    cut = absent_gap == cutoff if cutoff is not None else np.zeros_like(participated)
    ended = participated | cut
    length = np.where(participated, stats.gap + 1, absent_gap)
    new = Intervals(
        gap=np.where(ended, 0, absent_gap),
        count=stats.count + ended,
        total=stats.total + np.where(ended, length, 0),
    )
    return omegas(stats), new


def participate(
    stats: Intervals, absent_rounds: np.ndarray, cutoff: int | None
) -> tuple[np.ndarray, Intervals]:
    """The lazy step for clients replying now: (their ω, their new statistics).

    ``absent_rounds``: rounds each missed since its statistics were last updated.

    >>> omega, s = participate(Intervals.start(2), np.array([0, 3]), cutoff=None)
    >>> omega.tolist(), s.count.tolist(), s.total.tolist()
    ([1.0, 1.0], [1, 1], [1, 4])
    """
    caught_up = skip_rounds(stats, absent_rounds, cutoff)
    return omegas(caught_up), record_participation(caught_up)


class FedAU(ServerUpdateStrategy):
    """FedAU with lazy per-client interval statistics.

    Options (``[strategy]`` table): ``cutoff`` (K: an integer ≥ 2, or ``inf``,
    the default), ``server_lr`` (η_g, default 1), plus Flower FedAvg's
    ``fraction_train``, ``fraction_evaluate``, ``min_*_nodes``. Needs
    ``num_clients`` (N, every client), which fedsim fills in.

    After each aggregation ``client_metrics`` holds ``{node_id: {"omega": ω}}``
    for the clients aggregated in that round.
    """

    def __init__(
        self,
        *,
        cutoff: int | float | str | None = None,
        server_lr: float = 1.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if self.num_clients is None:
            raise ValueError("FedAU needs num_clients (all clients, not just those seen)")
        self.cutoff = parse_cutoff(cutoff)
        self.server_lr = float(server_lr)
        self._reset(ClientRows(self.num_clients))

    def _reset(self, rows: ClientRows) -> None:
        self._rows = rows
        self._stats = Intervals.start(rows.capacity)
        # The last server round each client's statistics account for (0: none yet).
        self._last_round = np.zeros(rows.capacity, dtype=np.int64)

    def omega_of(self, node_id: int, server_round: int) -> float:
        """The ω ``node_id`` would get if it replied in ``server_round`` (changes nothing)."""
        row = self._rows.find(node_id)
        if row is None:
            stats, last = Intervals.start(1), 0
        else:
            stats, last = self._stats.take(np.array([row])), int(self._last_round[row])
        if server_round <= last:
            raise ValueError(f"round {server_round} is not after round {last}, already aggregated")
        omega, _ = participate(stats, np.array([server_round - 1 - last]), self.cutoff)
        return float(omega[0])

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
        rows = self._rows.rows(node_ids)
        absent = server_round - 1 - self._last_round[rows]
        if (absent < 0).any():
            raise ValueError(f"round {server_round} is not after the last round aggregated")
        omega, new = participate(self._stats.take(rows), absent, self.cutoff)
        self._stats.gap[rows], self._stats.count[rows], self._stats.total[rows] = new.fields()
        self._last_round[rows] = server_round
        self.client_metrics = {
            n: {keys.OMEGA: float(w)} for n, w in zip(node_ids, omega, strict=True)
        }
        assert self.num_clients is not None
        return weighted_server_update(
            global_vector, client_vectors, omega / self.num_clients, self.server_lr
        )

    def state_dict(self) -> dict[str, Any]:
        """Node ids in row order and, per row, last round, gap, count and interval sum."""
        seen = len(self._rows)
        return {
            "node_ids": self._rows.node_ids,
            "last_round": self._last_round[:seen].tolist(),
            "gap": self._stats.gap[:seen].tolist(),
            "count": self._stats.count[:seen].tolist(),
            "total": self._stats.total[:seen].tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.num_clients is not None
        fields = ("last_round", "gap", "count", "total")
        missing = {"node_ids", *fields} - set(state)
        if missing:
            raise ValueError(f"FedAU state lacks {sorted(missing)}")
        node_ids = [int(n) for n in state["node_ids"]]
        if any(len(state[f]) != len(node_ids) for f in fields):
            raise ValueError("FedAU state: every field needs one entry per node id")
        self._reset(ClientRows(self.num_clients, node_ids))
        seen = len(node_ids)
        for target, field in zip((self._last_round, *self._stats.fields()), fields, strict=True):
            target[:seen] = np.asarray(state[field], dtype=np.int64)
