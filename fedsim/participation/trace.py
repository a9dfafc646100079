"""Replay a recorded availability table: who was reachable in each round.

Real availability is easiest to study from logs (device check-ins, a testbed's
uptime), so a scenario can point at a table with one row per (round, client)
that was reachable — CSV or parquet, columns ``round`` (from 1) and ``client``
(0 .. N−1), and optionally ``available`` (rows where it is false or 0 are
ignored, so a full round × client export works as is). The trace's length is
its largest round; past it the replay cycles (``trace_end = "cycle"``), has
nobody reachable (``"stop"``), or ends the run with an error (``"error"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.errors import RunError, ScenarioError
from fedsim.participation.patterns import check_round

TRACE_SUFFIXES = (".csv", ".parquet")
TRACE_ENDS = ("cycle", "stop", "error")


class TracePattern:
    """Reachable clients read from a recorded table, round by round.

    >>> pattern = TracePattern([np.array([0, 2]), np.array([1])], num_clients=3, end="cycle")
    >>> [pattern.reachable(r).tolist() for r in (1, 2, 3)]
    [[0, 2], [1], [0, 2]]
    """

    def __init__(
        self, rounds: list[np.ndarray], *, num_clients: int, end: str, name: str = "trace"
    ) -> None:
        if end not in TRACE_ENDS:
            raise ValueError(f"end must be one of {TRACE_ENDS}, got {end!r}")
        if not rounds:
            raise ValueError("a trace needs at least one round")
        self.rounds = [np.asarray(r, dtype=np.int64) for r in rounds]
        self.num_clients = num_clients
        self.end = end
        self.name = name
        self.last_round = len(self.rounds)
        counts = np.zeros(num_clients)
        for reachable in self.rounds:
            counts[reachable] += 1
        # The long-run rate of a cycling replay; over the recorded rounds otherwise.
        self.probabilities: np.ndarray | None = counts / self.last_round

    def reachable(self, round: int) -> np.ndarray:
        index = check_round(round) - 1
        if index >= self.last_round:
            if self.end == "stop":
                return np.zeros(0, dtype=np.int64)
            if self.end == "error":
                raise RunError(
                    f"participation.trace: {self.name} ends at round {self.last_round}, "
                    f'round {round} was asked (trace_end = "error")'
                )
            index %= self.last_round
        return self.rounds[index].copy()


def load_trace(
    path: Path, *, num_clients: int, source: str | Path, key: str, spec: object
) -> list[np.ndarray]:
    """The sorted reachable clients of rounds 1..L of a trace file (L = its largest round)."""

    def fail(expected: str, got: object = spec) -> ScenarioError:
        return ScenarioError(source, key, expected, got=got)

    if path.suffix not in TRACE_SUFFIXES:
        raise fail("a .csv or .parquet trace file")
    if not path.is_file():
        raise fail(f"an existing trace file ({path} does not exist)")
    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as error:  # pandas and pyarrow raise many kinds for a bad file
        raise fail(f"a readable trace file ({path.name}: {type(error).__name__})") from error
    missing = {"round", "client"} - set(frame.columns)
    if missing:
        raise fail(
            f"a trace with columns round and client ({path.name} has: "
            f"{', '.join(map(str, frame.columns))})"
        )
    # Rows of unavailable clients still count for the trace's length.
    last_round = frame["round"].max() if len(frame) else 0
    if "available" in frame.columns:
        available = frame["available"].to_numpy()
        if available.dtype != bool and not np.isin(available, [0, 1]).all():
            raise fail(f"true/false or 0/1 in column available of {path.name}")
        frame = frame[available.astype(bool)]
    rounds = frame["round"].to_numpy()
    clients = frame["client"].to_numpy()
    for column, values in (("round", rounds), ("client", clients)):
        if len(values) and not np.issubdtype(values.dtype, np.integer):
            raise fail(f"integers in column {column} of {path.name}")
    if not len(rounds):
        raise fail(f"a trace with at least one reachable client ({path.name} has none)")
    if rounds.min() < 1:
        raise fail(f"rounds >= 1 in {path.name} (rounds start at 1)", int(rounds.min()))
    unknown = np.unique(clients[(clients < 0) | (clients >= num_clients)])
    if len(unknown):
        raise fail(
            f"client ids in [0, {num_clients}) in {path.name} (unknown clients)",
            [int(c) for c in unknown[:5]] + (["..."] if len(unknown) > 5 else []),
        )
    return rounds_from_pairs(rounds.astype(np.int64), clients.astype(np.int64), int(last_round))


def rounds_from_pairs(
    rounds: np.ndarray, clients: np.ndarray, last_round: int | None = None
) -> list[np.ndarray]:
    """Group (round, client) pairs into sorted, de-duplicated client arrays for rounds
    1..last_round (default: the largest round).

    >>> rounds_from_pairs(np.array([2, 1, 2, 2]), np.array([5, 3, 1, 5]), 3)
    [array([3]), array([1, 5]), array([], dtype=int64)]
    """
    order = np.lexsort((clients, rounds))
    rounds, clients = rounds[order], clients[order]
    keep = np.ones(len(rounds), dtype=bool)
    keep[1:] = (rounds[1:] != rounds[:-1]) | (clients[1:] != clients[:-1])
    rounds, clients = rounds[keep], clients[keep]
    last = int(rounds[-1]) if last_round is None else max(last_round, int(rounds[-1]))
    bounds = np.searchsorted(rounds, np.arange(1, last + 2))
    return [clients[bounds[r] : bounds[r + 1]] for r in range(last)]
