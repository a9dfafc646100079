"""The virtual clock of a synchronous round: each client's duration and the round's close.

Pure functions with hand-computable results, and one small stateful
:class:`VirtualClock` (the simulated time now) that the engine's
:class:`~fedsim.engine.reachable.ReachableGrid` advances once per round. A
resumed run restarts the clock from the last round's recorded end
(``round_end_s``), so it needs no place in the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fedsim.records import records_of

BITS_PER_MBIT = 1e6


@dataclass(frozen=True)
class ClientTime:
    """One client-round in simulated seconds.

    >>> ClientTime(download=1.0, compute=2.5, upload=0.5, latency=0.25).total
    4.25
    """

    download: float
    compute: float
    upload: float
    latency: float

    @property
    def total(self) -> float:
        return self.download + self.compute + self.upload + self.latency


def transfer_seconds(nbytes: int, mbit_per_s: float) -> float:
    """Seconds to move ``nbytes`` at ``mbit_per_s`` megabits (10⁶ bits) per second.

    >>> transfer_seconds(1_000_000, 8.0), transfer_seconds(10, math.inf)
    (1.0, 0.0)
    """
    return 0.0 if math.isinf(mbit_per_s) else nbytes * 8 / (mbit_per_s * BITS_PER_MBIT)


def payload_bytes(content: RecordDict) -> int:
    """The bytes of a message's arrays (every ArrayRecord's tensors, as stored).

    Config and metric records, names and framing are left out: they are a few
    hundred bytes against a model's kilo- to gigabytes.

    >>> record = ArrayRecord([np.zeros((3, 4), np.float32), np.zeros(4, np.float64)])
    >>> payload_bytes(RecordDict({"arrays": record}))
    80
    """
    total = 0
    for record in records_of(content, ArrayRecord):
        for name in record:
            array = record[name]
            total += int(np.prod(array.shape, dtype=np.int64)) * np.dtype(array.dtype).itemsize
    return total


@dataclass(frozen=True)
class RoundClose:
    """How a synchronous round closed: the accepted clients in order of arrival, the
    late ones, and the round's duration in simulated seconds."""

    on_time: list[int]
    late: list[int]
    duration: float


def close_round(
    arrivals: Mapping[int, float],
    *,
    deadline: float | None = None,
    keep_first: int | None = None,
    missing: bool = False,
) -> RoundClose:
    """Close a round given each replying client's arrival time (seconds after its start).

    - A reply after ``deadline`` is late.
    - ``keep_first = k`` (over-selection): the round closes at the k-th reply in
      order of arrival (ties by client id); later replies are late.
    - Otherwise the round lasts until its last on-time reply, or until the deadline
      when a reply is late or ``missing`` (a selected client dropped out: the
      server cannot tell it will never answer, so it waits out the deadline).

    >>> close_round({0: 4.0, 1: 9.0}, deadline=5.0)
    RoundClose(on_time=[0], late=[1], duration=5.0)
    >>> close_round({0: 4.0, 1: 9.0, 2: 1.0}, keep_first=2)
    RoundClose(on_time=[2, 0], late=[1], duration=4.0)
    >>> close_round({0: 4.0}, deadline=5.0, missing=True).duration, close_round({}).duration
    (5.0, 0.0)
    """
    limit = math.inf if deadline is None else deadline
    order = sorted(arrivals, key=lambda c: (arrivals[c], c))
    on_time = [c for c in order if arrivals[c] <= limit]
    late = [c for c in order if arrivals[c] > limit]
    if keep_first is not None and len(on_time) >= keep_first:
        kept, rest = on_time[:keep_first], on_time[keep_first:]
        return RoundClose(kept, rest + late, arrivals[kept[-1]] if kept else 0.0)
    if deadline is not None and (late or missing):
        return RoundClose(on_time, late, float(deadline))
    return RoundClose(on_time, late, max((arrivals[c] for c in on_time), default=0.0))


class VirtualClock:
    """The simulated time (seconds since the run began); rounds advance it.

    >>> clock = VirtualClock(now=10.0)
    >>> clock.advance(2.5), clock.now
    ((10.0, 12.5), 12.5)
    """

    def __init__(self, now: float = 0.0) -> None:
        self.now = float(now)

    def advance(self, duration: float) -> tuple[float, float]:
        """Move on by ``duration``; returns the (start, end) of that span."""
        start = self.now
        self.now = start + float(duration)
        return start, self.now
