"""The round loop: Flower's ``Strategy.start``, opened up.

It makes the same calls, in the same order, as Flower's ``Strategy.start``
(configure_train → send_and_receive → aggregate_train → configure_evaluate →
send_and_receive → aggregate_evaluate → centralised evaluation), so any Flower
Message-API strategy behaves exactly as under Flower. Opening the loop up lets
the simulator do what ``start`` cannot: set each round's reachable clients,
seed Flower's node sampling, record every reply per client, time each phase,
and hand control back between rounds (progress, checkpoints, stopping).

Failures are data, not crashes: a client whose ClientApp raised, whose actor
died or who did not answer within ``engine.timeout`` is recorded as failed for
that (round, client), with the reason in the run's events, and the round
aggregates the replies that arrived. Only when more clients fail in a round
than ``engine.max_failures_per_round`` (a count) or ``max_failure_fraction``
(of the clients asked) allow, or when the aggregated model is not finite, does
the run stop, with a :class:`~fedsim.errors.RunError` naming the round and the
clients.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fedsim import keys
from fedsim.arrays import array_to_numpy
from fedsim.engine.reachable import ReachableGrid
from fedsim.errors import RunError
from fedsim.records import records_of
from fedsim.results import EVENT_EVALUATE_FAILED, RoundLog, RunWriter
from fedsim.seeding import seed_sequence

CentralEvaluate = Callable[[int, ArrayRecord], dict[str, float]]


@dataclass
class LoopSettings:
    rounds: int
    seed: int
    timeout: float
    evaluate_every: int
    central: CentralEvaluate | None
    federated: bool
    train_config: dict[str, Any]
    max_failures: int | None = None
    max_failure_fraction: float | None = None
    evaluate_config: dict[str, Any] = field(default_factory=dict)


def _finite(arrays: ArrayRecord) -> bool:
    return all(bool(np.isfinite(array_to_numpy(arrays[name])).all()) for name in arrays)


def _reply_finite(reply: Message) -> bool:
    return all(_finite(record) for record in records_of(reply.content, ArrayRecord))


def note_missing_replies(log: RoundLog, timeout: float) -> None:
    """Clients asked to train that neither replied nor failed timed out: record them failed.

    >>> log = RoundLog(available=np.arange(3), selected={0, 1, 2}, replied={0}, dropped={1})
    >>> note_missing_replies(log, 5.0); log.failed
    {2: 'no reply within engine.timeout (5 s)'}
    """
    known = log.replied | log.dropped | set(log.late) | set(log.failed)
    for client in sorted(log.selected - known):
        log.failed[client] = f"no reply within engine.timeout ({timeout:g} s)"


def check_failures(
    rnd: int, log: RoundLog, max_failures: int | None, max_fraction: float | None
) -> None:
    """Stop the run when a round's failures exceed either limit.

    The fraction is of the clients whose messages were delivered (selected,
    less those the participation faults dropped or made late).

    >>> log = RoundLog(available=np.arange(4), selected={0, 1, 2, 3}, replied={0, 1, 2},
    ...                failed={3: "ValueError: bad"})
    >>> check_failures(1, log, 1, 0.25)
    >>> try:
    ...     check_failures(1, log, 0, None)
    ... except RunError as error:
    ...     print(str(error).split(" allows "))  # doctest: +NORMALIZE_WHITESPACE
    ['round 1: 1 of 4 clients failed, more than engine.max_failures_per_round = 0',
     '(client 3: ValueError: bad; every reason is in events.jsonl)']
    """
    failed = len(log.failed)
    if not failed:
        return
    asked = len(log.selected - log.dropped - set(log.late))
    fraction = failed / max(asked, 1)
    if max_failures is not None and failed > max_failures:
        limit = f"engine.max_failures_per_round = {max_failures}"
    elif max_fraction is not None and fraction > max_fraction:
        limit = f"engine.max_failure_fraction = {max_fraction:g}"
    else:
        return
    client, reason = next(iter(sorted(log.failed.items())))
    first_line = reason.strip().splitlines()[0] if reason.strip() else "unknown error"
    others = f" and {failed - 1} more" if failed > 1 else ""
    raise RunError(
        f"round {rnd}: {failed} of {asked} clients failed, more than {limit} allows "
        f"(client {client}: {first_line}{others}; every reason is in events.jsonl)"
    )


def divergence_error(rnd: int, replies: list[Message], client_of: dict[int, int]) -> RunError:
    """The error for a non-finite aggregate, naming the clients whose updates were not finite."""
    bad = [
        client_of[reply.metadata.src_node_id]
        for reply in replies
        if not reply.has_error() and not _reply_finite(reply)
    ]
    if bad:
        culprits = f"non-finite updates from client{'s' if len(bad) > 1 else ''} " + ", ".join(
            map(str, sorted(bad))
        )
    else:
        culprits = "every client update was finite: the server update itself diverged"
    return RunError(
        f"round {rnd}: the aggregated model has NaN or inf values ({culprits}); "
        "lower client.lr or the strategy's server learning rate"
    )


def run_rounds(
    *,
    grid: ReachableGrid,
    strategy: Any,
    arrays: ArrayRecord,
    settings: LoopSettings,
    writer: RunWriter,
    first_round: int = 1,
    on_round_end: Callable[[int, ArrayRecord], None] | None = None,
) -> ArrayRecord:
    """Run rounds ``first_round..settings.rounds``; returns the final global arrays."""
    client_of = grid.client_of_node
    if first_round == 1 and settings.central is not None:
        _central(settings.central, 0, arrays, writer)
    for rnd in range(first_round, settings.rounds + 1):
        started = time.perf_counter()
        log = grid.begin_round(rnd)
        # Flower's own strategies sample nodes with Python's global `random`.
        random.seed(int(seed_sequence(settings.seed, "flower-sampling", rnd).generate_state(1)[0]))
        messages = strategy.configure_train(rnd, arrays, ConfigRecord(settings.train_config), grid)
        replies = list(grid.send_and_receive(messages, timeout=settings.timeout))
        grid.end_train()
        trained = time.perf_counter()
        note_missing_replies(log, settings.timeout)
        writer.participation(rnd, log)
        writer.simulated_time(rnd, log)
        check_failures(rnd, log, settings.max_failures, settings.max_failure_fraction)
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        aggregated = time.perf_counter()
        for reply in replies:
            if not reply.has_error():
                for record in records_of(reply.content, MetricRecord):
                    writer.metrics(
                        rnd, client_of[reply.metadata.src_node_id], keys.PHASE_TRAIN, record.items()
                    )
        for node, values in getattr(strategy, "client_metrics", {}).items():
            writer.metrics(rnd, client_of[node], keys.PHASE_SERVER, values.items())
        if train_metrics is not None:
            writer.metrics(rnd, None, keys.PHASE_TRAIN, train_metrics.items())
        if new_arrays is not None:
            if not _finite(new_arrays):
                raise divergence_error(rnd, replies, client_of)
            arrays = new_arrays
        evaluate_now = settings.evaluate_every and (
            rnd % settings.evaluate_every == 0 or rnd == settings.rounds
        )
        if evaluate_now and settings.federated:
            evaluation = strategy.configure_evaluate(
                rnd, arrays, ConfigRecord(settings.evaluate_config), grid
            )
            evaluation_replies = list(grid.send_and_receive(evaluation, timeout=settings.timeout))
            for reply in evaluation_replies:
                if reply.has_error():
                    client = client_of[reply.metadata.src_node_id]
                    writer.event(
                        rnd, EVENT_EVALUATE_FAILED, client=client, reason=reply.error.reason
                    )
                else:
                    for record in records_of(reply.content, MetricRecord):
                        writer.metrics(
                            rnd,
                            client_of[reply.metadata.src_node_id],
                            keys.PHASE_EVALUATE,
                            record.items(),
                        )
            aggregate: MetricRecord | None = strategy.aggregate_evaluate(rnd, evaluation_replies)
            if aggregate is not None:
                writer.metrics(rnd, None, keys.PHASE_EVALUATE, aggregate.items())
        if evaluate_now and settings.central is not None:
            _central(settings.central, rnd, arrays, writer)
            if hasattr(strategy, "evaluate_nodes"):
                _central_per_node(strategy, settings.central, rnd, client_of, writer)
        write_timing(writer, rnd, log, started, trained, aggregated)
        if on_round_end is not None:
            on_round_end(rnd, arrays)
    return arrays


def write_timing(
    writer: RunWriter, rnd: int, log: RoundLog, started: float, trained: float, aggregated: float
) -> None:
    """A round's timing rows: wall seconds of the round and of its phases (clients,
    aggregation, evaluation, measured from ``perf_counter`` marks), replies, reachable."""
    finished = time.perf_counter()
    writer.metrics(
        rnd,
        None,
        keys.PHASE_TIMING,
        [
            ("round_s", finished - started),
            ("clients_s", trained - started),
            ("aggregate_s", aggregated - trained),
            ("evaluate_s", finished - aggregated),
            ("replies", len(log.replied)),
            ("available", len(log.available)),
        ],
    )


def _central(evaluate: CentralEvaluate, rnd: int, arrays: ArrayRecord, writer: RunWriter) -> None:
    writer.metrics(rnd, None, keys.PHASE_CENTRAL, evaluate(rnd, arrays).items())


def _central_per_node(
    strategy: Any,
    evaluate: CentralEvaluate,
    rnd: int,
    client_of: dict[int, int],
    writer: RunWriter,
) -> None:
    """Decentralised strategies: every node's own model on the test set, and the spread."""
    per_node: dict[int, dict[str, float]] = strategy.evaluate_nodes(
        lambda node_arrays: evaluate(rnd, node_arrays)
    )
    for node, values in sorted(per_node.items()):
        writer.metrics(rnd, client_of[node], keys.PHASE_CENTRAL, values.items())
    names = sorted({name for values in per_node.values() for name in values})
    for name in names:
        column = np.array([values[name] for values in per_node.values() if name in values])
        writer.metrics(
            rnd,
            None,
            keys.PHASE_CENTRAL,
            [
                (f"node_{name}_mean", column.mean()),
                (f"node_{name}_min", column.min()),
                (f"node_{name}_max", column.max()),
                (f"node_{name}_std", column.std()),
            ],
        )
