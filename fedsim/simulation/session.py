"""One session of a run on a started engine: the strategy built for the grid's nodes,
the rounds (from a checkpoint, if resuming), checkpoints every k rounds and on a stop
request, and the engine's cohort counts recorded per round.

A run has one session, or several when it is interrupted and resumed; the
results of all of them together equal an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid

from fedsim import keys
from fedsim.client.device import resolve_device
from fedsim.client.training import evaluate_arrays
from fedsim.config import Scenario
from fedsim.engine.reachable import ReachableGrid
from fedsim.errors import RunError
from fedsim.privacy.wrapper import PrivateStrategy
from fedsim.results import (
    EVENT_CHECKPOINT_FAILED,
    EVENT_COHORT_FALLBACK,
    EVENT_PRIVACY_ACCOUNTING,
    SUMMARY_CLIENT_ROUNDS,
    SUMMARY_COHORT_CLIENT_ROUNDS,
    SUMMARY_COHORT_EVALUATIONS,
    SUMMARY_DELTA,
    SUMMARY_ENGINE,
    SUMMARY_EPSILON,
    SUMMARY_FINAL_ACCURACY,
    SUMMARY_FINAL_LOSS,
    SUMMARY_NAME,
    SUMMARY_PRIVACY_ACCOUNTING,
    SUMMARY_ROUNDS,
    SUMMARY_WALL_TIME,
    RunWriter,
)
from fedsim.simulation.async_loop import run_async
from fedsim.simulation.checkpoint import (
    Checkpoint,
    RunInterrupted,
    arrays_from_numpy,
    arrays_to_numpy,
    restore_rng,
    restore_strategy,
    rng_state,
    save_checkpoint,
    strategy_state,
)
from fedsim.simulation.loop import LoopSettings, run_rounds
from fedsim.simulation.setup import RunSetup


@dataclass
class RunControl:
    """How a caller steers a run: progress callback, stop request, resume point.

    ``stop``: once set (the CLI sets it on Ctrl-C), the run ends after the current
    round, writes a checkpoint and the results so far, and raises RunInterrupted.
    """

    on_round_end: Callable[[int, float | None], None] | None = None
    stop: threading.Event | None = None
    resume: Checkpoint | None = None
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        """Wall time of the run so far, earlier sessions of a resumed run included."""
        before = self.resume.elapsed_s if self.resume is not None else 0.0
        return before + time.monotonic() - self.started


@contextlib.contextmanager
def tracked(
    scenario: Scenario, run_dir: Path, writer: RunWriter, control: RunControl
) -> Iterator[Callable[[Mapping[str, Any]], None]]:
    """The scenario's trackers (``[log] trackers``) for the run inside the block: fed the
    rows of every round as it ends (through ``control.on_round_end``), ended as failed
    (an error) or killed (interrupted, resumable) when the block raises. Yields what
    ends them with the run's summary, once its files are complete."""
    if not scenario.trackers:
        yield lambda _summary: None
        return
    from fedsim.trackers import Trackers

    trackers = Trackers(scenario.trackers, run_dir, scenario.raw)
    trackers.skip_to(len(writer.metric_rows) if control.resume is not None else 0)
    outer = control.on_round_end

    def on_round_end(rnd: int, accuracy: float | None) -> None:
        trackers.update(writer.metric_rows)
        if outer is not None:
            outer(rnd, accuracy)

    def finish(summary: Mapping[str, Any]) -> None:
        trackers.update(writer.metric_rows)
        trackers.finish(summary)

    control.on_round_end = on_round_end
    try:
        yield finish
    except BaseException as error:
        trackers.update(writer.metric_rows)
        trackers.stop("KILLED" if isinstance(error, RunInterrupted) else "FAILED")
        raise


def central_evaluator(
    setup: RunSetup, device: torch.device
) -> Callable[[int, ArrayRecord], dict[str, float]] | None:
    """Test-set loss and accuracy of the global model, on the server device."""
    if not setup.scenario.evaluate.central or setup.model is None or setup.store is None:
        return None
    model = setup.model.to(device)
    x, y = kept_on(device, *setup.store.central_test())
    batch_size = setup.scenario.evaluate.batch_size

    def evaluate(_round: int, arrays: ArrayRecord) -> dict[str, float]:
        state = {name: torch.from_numpy(arrays[name].numpy()) for name in arrays}
        model.load_state_dict(state)
        loss, accuracy = evaluate_arrays(model, x, y, device=device, batch_size=batch_size)
        return {keys.METRIC_LOSS: loss, keys.METRIC_ACCURACY: accuracy}

    return evaluate


def kept_on(
    device: torch.device, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """The central test set as tensors on an accelerator when it fits a quarter of the
    free memory (copied there once, not every evaluation); else the host arrays."""
    if device.type != "cuda" or x.nbytes + y.nbytes > torch.cuda.mem_get_info(device)[0] // 4:
        return x, y
    return torch.from_numpy(np.ascontiguousarray(x)).to(device), torch.from_numpy(
        np.ascontiguousarray(y)
    ).to(device)


def _origin(scenario: Scenario) -> tuple[str, str]:
    """The scenario file and folder as absolute paths (a resume may run elsewhere)."""
    source = scenario.source
    if Path(source).is_file():
        source = str(Path(source).resolve())
    return source, str(Path(scenario.base_dir).resolve())


def run_session(
    setup: RunSetup,
    grid: Grid,
    node_of_client: dict[int, int],
    writer: RunWriter,
    control: RunControl | None = None,
) -> ArrayRecord:
    """Build the strategy for this grid and run every round (from a checkpoint, if any).

    Checkpoints need the grid's per-node Contexts (``RayGrid.contexts``); Flower's
    own engine keeps them out of reach, so under it no checkpoint is written.
    """
    control = control or RunControl()
    scenario = setup.scenario
    assert setup.run_dir is not None
    run_dir = setup.run_dir
    server_device = resolve_device(scenario.engine.server_device)
    reachable = ReachableGrid(
        grid,
        node_of_client=node_of_client,
        reachable=setup.pattern.reachable,
        faults=setup.faults,
        system=setup.system,
        # A resumed run's clock goes on from the last round it recorded.
        start_time=writer.latest(keys.PHASE_SYSTEM, keys.ROUND_END_S) or 0.0,
        reachable_at=setup.pattern.reachable_at
        if getattr(setup.pattern, "time_period", None) is not None
        else None,
    )
    strategy = setup.build_strategy(setup.strategy_inputs(node_of_client, str(server_device)))
    settings = LoopSettings(
        rounds=scenario.rounds,
        seed=scenario.seed,
        timeout=scenario.engine.timeout,
        evaluate_every=scenario.evaluate.every,
        central=central_evaluator(setup, server_device),
        federated=scenario.evaluate.federated,
        train_config={},
        max_failures=scenario.engine.max_failures_per_round,
        max_failure_fraction=scenario.engine.max_failure_fraction,
    )
    contexts: dict[int, Context] | None = getattr(grid, "contexts", None)
    arrays, first_round = setup.initial_arrays, 1
    if control.resume is not None:
        if contexts is None:
            raise RunError(f"{run_dir}: this engine cannot resume a run")
        resume = control.resume
        restore_strategy(strategy, resume.strategy)
        contexts.clear()
        contexts.update(resume.contexts)
        arrays, first_round = arrays_from_numpy(resume.arrays), resume.round + 1
        restore_rng(resume.rng)
    unsaved: list[str] = []
    private = strategy if isinstance(strategy, PrivateStrategy) else None
    if private is not None and first_round == 1:
        writer.event(0, EVENT_PRIVACY_ACCOUNTING, statement=private.sampling.statement)

    def checkpoint(rnd: int, arrays: ArrayRecord) -> bool:
        writer.flush()
        if contexts is None or unsaved:
            return False
        source, base_dir = _origin(scenario)
        try:
            state = strategy_state(strategy, allow_pickle=scenario.checkpoint_allow_pickle)
        except Exception as error:  # NotData, or whatever pickling (opted in) raises
            unsaved.append(f"{type(error).__name__}: {error}")
            writer.event(rnd, EVENT_CHECKPOINT_FAILED, reason=f"strategy state: {unsaved[0]}")
            writer.flush()
            return False
        save_checkpoint(
            run_dir,
            Checkpoint(
                round=rnd,
                arrays=arrays_to_numpy(arrays),
                strategy=state,
                contexts=dict(contexts),
                results=writer.snapshot(),
                source=source,
                base_dir=base_dir,
                elapsed_s=control.elapsed(),
                proxy_data=setup.proxy_data,
                rng=rng_state(),
            ),
        )
        return True

    cohorts = CohortBookkeeping(grid, writer)

    def round_end(rnd: int, arrays: ArrayRecord) -> None:
        cohorts.record(rnd, writer)
        if private is not None:
            record_privacy(private, rnd, rnd == scenario.rounds, writer)
        last = rnd == scenario.rounds
        stopping = control.stop is not None and control.stop.is_set() and not last
        every = scenario.checkpoint_every
        saved = False
        if stopping or (every and rnd % every == 0 and not last):
            saved = checkpoint(rnd, arrays)
        if control.on_round_end is not None:
            control.on_round_end(rnd, writer.latest(keys.PHASE_CENTRAL, keys.METRIC_ACCURACY))
        if stopping:
            raise RunInterrupted(rnd, scenario.rounds, run_dir, resumable=saved)

    run = run_async if getattr(strategy, "asynchronous", False) else run_rounds
    return run(
        grid=reachable,
        strategy=strategy,
        arrays=arrays,
        settings=settings,
        writer=writer,
        first_round=first_round,
        on_round_end=round_end,
    )


def record_privacy(strategy: PrivateStrategy, rnd: int, last: bool, writer: RunWriter) -> None:
    """A round's privacy rows (phase ``privacy``) and, after the last, each client's ε."""
    writer.metrics(rnd, None, keys.PHASE_PRIVACY, strategy.round_metrics.items())
    if last:
        for client, value in enumerate(strategy.accountant.per_client(rnd)):
            writer.metric(rnd, client, keys.PHASE_PRIVACY, keys.DP_EPSILON, float(value))


def privacy_summary(scenario: Scenario, writer: RunWriter) -> dict[str, object]:
    """summary.json's privacy fields: ε after the last round, δ, and what was assumed."""
    if scenario.privacy is None:
        return {}
    statements = [
        e.get("statement") for e in writer.events if e["event"] == EVENT_PRIVACY_ACCOUNTING
    ]
    return {
        SUMMARY_EPSILON: writer.latest(keys.PHASE_PRIVACY, keys.DP_EPSILON),
        SUMMARY_DELTA: scenario.privacy.delta,
        SUMMARY_PRIVACY_ACCOUNTING: statements[0] if statements else None,
    }


COHORT_COUNTS = ("train_served", "cohort_train", "cohort_evaluate")


class CohortBookkeeping:
    """Per round, how many train messages a grid served, and how many train and evaluate
    messages in cohorts (timing rows ``train_served``, ``cohort_train``,
    ``cohort_evaluate``); and one ``cohort_fallback`` event per reason, the first time
    messages are served one at a time for it (a resumed run knows its earlier events)."""

    def __init__(self, grid: Grid, writer: RunWriter) -> None:
        self.stats: dict[str, float] | None = getattr(grid, "stats", None)
        self.fallbacks: Counter[str] | None = getattr(grid, "cohort_fallbacks", None)
        self.counted = dict.fromkeys(COHORT_COUNTS, 0.0)
        self.reported = {
            str(e.get("reason")) for e in writer.events if e["event"] == EVENT_COHORT_FALLBACK
        }

    def record(self, rnd: int, writer: RunWriter) -> None:
        if self.stats is None:
            return
        rows = [(name, self.stats[name] - self.counted[name]) for name in COHORT_COUNTS]
        writer.metrics(rnd, None, keys.PHASE_TIMING, rows)
        self.counted = {name: self.stats[name] for name in COHORT_COUNTS}
        for reason in sorted(set(self.fallbacks or ()) - self.reported):
            writer.event(rnd, EVENT_COHORT_FALLBACK, reason=reason)
            self.reported.add(reason)


def run_summary(
    scenario: Scenario, rounds: int, writer: RunWriter, control: RunControl
) -> dict[str, Any]:
    """``summary.json``'s common fields: name, rounds done, engine, wall time, the last
    central accuracy and loss, and the cohort counts."""
    return {
        SUMMARY_NAME: scenario.name,
        SUMMARY_ROUNDS: rounds,
        SUMMARY_ENGINE: scenario.engine.kind,
        SUMMARY_WALL_TIME: control.elapsed(),
        SUMMARY_FINAL_ACCURACY: writer.latest(keys.PHASE_CENTRAL, keys.METRIC_ACCURACY),
        SUMMARY_FINAL_LOSS: writer.latest(keys.PHASE_CENTRAL, keys.METRIC_LOSS),
        **cohort_summary(writer),
    }


def cohort_summary(writer: RunWriter) -> dict[str, int]:
    """Client-rounds trained in all and in cohorts, from the run's timing rows (a
    resumed run's earlier rounds included)."""
    totals: Counter[str] = Counter()
    for _, client, phase, name, value in writer.metric_rows:
        if client is None and phase == keys.PHASE_TIMING and name in COHORT_COUNTS:
            totals[name] += int(value)
    if not totals:
        return {}  # an engine that does not count (Flower's)
    return {
        SUMMARY_CLIENT_ROUNDS: totals["train_served"],
        SUMMARY_COHORT_CLIENT_ROUNDS: totals["cohort_train"],
        SUMMARY_COHORT_EVALUATIONS: totals["cohort_evaluate"],
    }
