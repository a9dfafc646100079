"""The round loop: Flower's ``Strategy.start``, opened up.

It makes the same calls, in the same order, as Flower's ``Strategy.start``
(configure_train → send_and_receive → aggregate_train → configure_evaluate →
send_and_receive → aggregate_evaluate → centralised evaluation), so any Flower
Message-API strategy behaves exactly as under Flower. Opening the loop up lets
the simulator do what ``start`` cannot: set each round's reachable clients,
seed Flower's node sampling, record every reply per client, time each phase,
and hand control back between rounds (progress, checkpoints, stopping).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from fedsim import keys
from fedsim.engine.reachable import ReachableGrid
from fedsim.errors import RunError
from fedsim.results import RunWriter
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


def _finite(arrays: ArrayRecord) -> bool:
    return all(bool(math.isfinite(float(abs(arrays[name].numpy()).sum()))) for name in arrays)


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
        trained = time.perf_counter()
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        aggregated = time.perf_counter()
        for reply in replies:
            if not reply.has_error():
                for record in reply.content.metric_records.values():
                    writer.metrics(
                        rnd, client_of[reply.metadata.src_node_id], keys.PHASE_TRAIN, record.items()
                    )
        for node, values in getattr(strategy, "client_metrics", {}).items():
            writer.metrics(rnd, client_of[node], keys.PHASE_SERVER, values.items())
        if train_metrics is not None:
            writer.metrics(rnd, None, keys.PHASE_TRAIN, train_metrics.items())
        if new_arrays is not None:
            if not _finite(new_arrays):
                raise RunError(f"round {rnd}: the aggregated model has NaN or inf values")
            arrays = new_arrays
        writer.participation(rnd, log)
        evaluate_now = settings.evaluate_every and (
            rnd % settings.evaluate_every == 0 or rnd == settings.rounds
        )
        if evaluate_now and settings.federated:
            evaluation = strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid)
            evaluation_replies = list(grid.send_and_receive(evaluation, timeout=settings.timeout))
            for reply in evaluation_replies:
                if not reply.has_error():
                    for record in reply.content.metric_records.values():
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
        if on_round_end is not None:
            on_round_end(rnd, arrays)
    return arrays


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
