"""The asynchronous loop: FedBuff and FedAsync driven by the virtual clock.

There are no synchronous rounds: up to ``strategy.concurrency`` clients train
at once, each on the model version it received. A dispatched client trains at
once (on whichever engine: the messages go through the same
:class:`~fedsim.engine.reachable.ReachableGrid`), and its reply is held back
until its simulated arrival (download + compute + upload + latency, from the
real message sizes, :mod:`fedsim.system`). Arrivals are handed to the strategy
in order of simulated arrival (ties by client id) with their staleness; a freed
slot is refilled at once from the reachable clients not in flight, chosen with
the stream ``(seed, "async.dispatch", k)`` for the k-th dispatch.

A "round" of an asynchronous run is one server model update: its rows are the
update's simulated start and end, the clients whose updates it applied
(``replied``, with their simulated seconds and a ``staleness`` server row), the
clients dispatched during it (``selected``), and the central evaluation. Who is
reachable is the pattern's answer for the round (at its simulated start for a
time-driven pattern). When nobody is in flight and nobody can be asked, the
round ends without an update after ``system.idle_round``. Deadlines and
``keep_first`` belong to synchronous rounds and are not used here; a dropped or
failed client frees its slot at once.

The loop's whole state lives in the strategy (:class:`AsyncState`), so a
checkpoint between two updates resumes identically.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import MessageType

from fedsim import keys
from fedsim.arrays import array_to_numpy, numpy_to_array
from fedsim.engine.reachable import ReachableGrid
from fedsim.records import first_of
from fedsim.results import RunWriter
from fedsim.seeding import rng
from fedsim.simulation.loop import (
    LoopSettings,
    _central,
    _finite,
    check_failures,
    write_timing,
)
from fedsim.strategies.asynchronous import AsyncStrategy, Flight, Model

DISPATCH_PURPOSE = "async.dispatch"
STALENESS = "staleness"


def _to_model(record: ArrayRecord) -> Model:
    return {name: array_to_numpy(record[name]) for name in record}


def _to_record(model: Model) -> ArrayRecord:
    return ArrayRecord({name: numpy_to_array(value) for name, value in model.items()})


def _dispatch(
    grid: ReachableGrid,
    strategy: AsyncStrategy,
    x: Model,
    rnd: int,
    candidates: list[int],
    settings: LoopSettings,
) -> None:
    """Send the current model to as many of ``candidates`` as there are free slots."""
    state = strategy.state
    free = strategy.concurrency - len(state.flights)
    if free <= 0 or not candidates:
        return
    chosen = rng(settings.seed, DISPATCH_PURPOSE, state.dispatches).choice(
        np.asarray(candidates, dtype=np.int64), size=min(free, len(candidates)), replace=False
    )
    state.dispatches += 1
    state.versions[state.version] = x
    record = _to_record(x)
    config = ConfigRecord({keys.SERVER_ROUND: rnd})
    messages = [
        Message(
            RecordDict({keys.ARRAYS: record, keys.CONFIG: config}),
            dst_node_id=grid.node_of_client[int(client)],
            message_type=MessageType.TRAIN,
        )
        for client in sorted(int(c) for c in chosen)
    ]
    replies = list(grid.send_and_receive(messages, timeout=settings.timeout))
    for reply in replies:
        client = grid.client_of_node[reply.metadata.src_node_id]
        if reply.has_error() or client not in grid.last_times:
            continue
        times = grid.last_times[client]
        state.flights.append(
            Flight(
                arrival=grid.clock.now + times.total,
                client=client,
                version=state.version,
                examples=int(_examples(reply)),
                times=(times.download, times.compute, times.upload, times.latency),
                model=_to_model(first_of(reply.content, ArrayRecord)),
            )
        )
    state.prune()


def _examples(reply: Message) -> float:
    for record in reply.content.metric_records.values():
        value = record.get(keys.NUM_EXAMPLES)
        if isinstance(value, int | float):
            return float(value)
    return 0.0


def run_async(
    *,
    grid: ReachableGrid,
    strategy: AsyncStrategy,
    arrays: ArrayRecord,
    settings: LoopSettings,
    writer: RunWriter,
    first_round: int = 1,
    on_round_end: Callable[[int, ArrayRecord], None] | None = None,
) -> ArrayRecord:
    """Server updates ``first_round..settings.rounds``; returns the final global arrays."""
    system = grid.system
    assert system is not None, "an asynchronous strategy needs a [system] table"
    grid.asynchronous = True
    state = strategy.state
    x = _to_model(arrays)
    if first_round == 1 and settings.central is not None:
        _central(settings.central, 0, arrays, writer)
    for rnd in range(first_round, settings.rounds + 1):
        started = time.perf_counter()
        log = grid.begin_round(rnd)
        reachable = {int(c) for c in log.available}
        applied: list[tuple[int, int, Flight]] = []
        asked_now: set[int] = set()  # asked at this instant without a reply in flight
        instant = grid.clock.now
        updated = False
        while True:
            if grid.clock.now != instant:
                instant, asked_now = grid.clock.now, set()
            busy = {f.client for f in state.flights}
            candidates = sorted(reachable - busy - asked_now)
            before = state.dispatches
            _dispatch(grid, strategy, x, rnd, candidates, settings)
            if state.dispatches != before:
                asked_now |= set(log.selected) - {f.client for f in state.flights}
            if not state.flights:
                if state.dispatches != before:
                    continue  # everyone asked failed or dropped: ask the others
                grid.clock.advance(system.idle_round)
                break
            flight = min(state.flights, key=lambda f: (f.arrival, f.client))
            state.flights.remove(flight)
            grid.clock.now = max(grid.clock.now, flight.arrival)
            tau = state.version - flight.version
            base = state.versions[flight.version]
            new = strategy.receive(x, flight.model, base, tau, flight.examples)
            applied.append((flight.client, tau, flight))
            state.prune()
            if new is not None:
                x, updated = new, True
                state.version += 1
                break
        trained = time.perf_counter()
        start = log.span[0] if log.span is not None else instant
        log.span = (start, grid.clock.now)
        log.replied = {client for client, _, _ in applied}
        log.times = {client: flight.times for client, _, flight in applied}
        log.available = np.union1d(log.available, sorted(log.replied)).astype(np.int64)
        writer.participation(rnd, log)
        writer.simulated_time(rnd, log)
        check_failures(rnd, log, settings.max_failures, settings.max_failure_fraction)
        for client, tau, _ in applied:
            writer.metrics(rnd, client, keys.PHASE_SERVER, [(STALENESS, tau)])
        if updated:
            new_arrays = _to_record(x)
            if not _finite(new_arrays):
                from fedsim.errors import RunError

                raise RunError(
                    f"round {rnd}: the aggregated model has NaN or inf values; "
                    "lower client.lr or the strategy's server learning rate"
                )
            arrays = new_arrays
        aggregated = time.perf_counter()
        evaluate_now = settings.evaluate_every and (
            rnd % settings.evaluate_every == 0 or rnd == settings.rounds
        )
        if evaluate_now and settings.central is not None:
            _central(settings.central, rnd, arrays, writer)
        write_timing(writer, rnd, log, started, trained, aggregated)
        if on_round_end is not None:
            on_round_end(rnd, arrays)
    return arrays
