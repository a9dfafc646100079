"""A Flower app project's ServerApp run on fedsim's grid (``fedsim run DIR``).

The app is loaded as ``flwr run`` loads it (its components from the project
folder, its run config in the Contexts) and its ServerApp's ``main(grid, context)``
is called with a fedsim grid: fedsim's Ray or inline engine serving the app's own
ClientApp, behind the participation pattern (:class:`~fedsim.engine.reachable.ReachableGrid`).

While the ServerApp runs, Flower's ``Strategy.start`` is fedsim's round loop
(:func:`fedsim.simulation.loop.run_rounds`), which makes the same calls in the same
order. That is how a Flower app gets rounds that fedsim can see: each round's
reachable nodes set before the strategy samples, every reply recorded per client,
the aggregated metrics the strategy returns written to ``metrics.parquet``, and
Flower's ``Result`` handed back to the app as ``start`` would. A ServerApp that
drives the grid itself, without ``Strategy.start``, still runs (every node
reachable) but has no rounds in the tables; an event says so.
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result, Strategy

from fedsim import keys
from fedsim.config import Scenario
from fedsim.engine.reachable import ReachableGrid
from fedsim.errors import FedsimError, ScenarioError
from fedsim.flower_project import (
    FLOWER_TABLE,
    FlowerProject,
    check_engine,
    project_record,
    project_scenario,
)
from fedsim.plugins import register_by_value
from fedsim.results import (
    ClientFacts,
    RunWriter,
)
from fedsim.simulation.checkpoint import RunInterrupted
from fedsim.simulation.launch import client_nodes, started_grid
from fedsim.simulation.loop import LoopSettings, run_rounds
from fedsim.simulation.session import CohortBookkeeping, RunControl, run_summary, tracked
from fedsim.simulation.setup import build_participation

EVENT_NO_STRATEGY_START = "no_strategy_start"
SERVERAPP_NODE_ID = 0  # the ServerApp's Context, as on a SuperLink


def app_scenario(project: FlowerProject, engine: str | None = None) -> Scenario:
    """The fedsim scenario that runs ``project``, its ClientApp loaded as an object."""
    client_app = load_component(project, "clientapp", ClientApp)
    scenario = Scenario.from_dict(
        project_scenario(project, engine),
        base_dir=project.path,
        source=str(project.pyproject),
        client_app=client_app,
    )
    check_engine(scenario, project)
    return scenario


def load_component(project: FlowerProject, name: str, kind: type) -> Any:
    """The project's ``serverapp`` or ``clientapp``, imported from its folder as Flower does;
    its modules are pickled by value for Ray's workers (they cannot import the project)."""
    from flwr.supercore.object_ref import load_app

    reference = getattr(project, name)
    key = f"tool.flwr.app.components.{name}"
    try:
        component = load_app(reference, ValueError, project.path)
    except Exception as error:  # whatever the app's import raises
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ScenarioError(
            project.pyproject,
            key,
            f"a module:attribute that imports from {project.path} "
            f"({type(error).__name__}: {first})",
            got=reference,
        ) from None
    if not isinstance(component, kind):
        raise ScenarioError(
            project.pyproject, key, f"a flwr {kind.__name__}", got=type(component).__name__
        )
    top = reference.partition(":")[0].split(".")[0]
    if top in sys.modules:
        register_by_value(sys.modules[top])
    return component


def run_flower_app(
    project: FlowerProject, scenario: Scenario, run_dir: Path, control: RunControl
) -> dict[str, Any]:
    """Run the project's ServerApp on ``scenario``'s engine into ``run_dir``; the summary."""
    server_app = load_component(project, "serverapp", ServerApp)
    client_app = scenario.objects["client_app"]
    writer = RunWriter(run_dir, {**scenario.raw, FLOWER_TABLE: project_record(project)})
    pattern, faults = build_participation(scenario, None)
    n = scenario.data.num_clients
    probabilities = getattr(pattern, "probabilities", None)
    # The app's ClientApp holds its own data: fedsim knows only the nodes and their rates.
    writer.client_facts(
        ClientFacts(
            num_clients=n,
            train_examples=None,
            test_examples=None,
            label_mix=None,
            participation_probability=None
            if probabilities is None
            else np.asarray(probabilities, np.float64),
        )
    )

    def reachable(rnd: int) -> np.ndarray:
        # Before the strategy starts (round 0) every node is there, as in Flower.
        return np.arange(n) if rnd == 0 else np.asarray(pattern.reachable(rnd))

    with tracked(scenario, run_dir, writer, control) as finish_trackers:
        starts = StrategyStarts(scenario, writer, control)
        try:
            with started_grid(
                scenario, client_app, scenario.engine.kind, project.run_config
            ) as inner:
                grid = ReachableGrid(
                    inner, node_of_client=client_nodes(n), reachable=reachable, faults=faults
                )
                grid.begin_round(0)
                starts.grid = grid
                context = Context(
                    run_id=inner.run.run_id,
                    node_id=SERVERAPP_NODE_ID,
                    node_config={},
                    state=RecordDict(),
                    run_config=dict(project.run_config),
                )
                with starts.installed():
                    server_app(grid, context)
        except RunInterrupted:
            writer.flush()
            raise
        except BaseException as error:
            writer.stopped(error)
            raise
        if starts.result is None:
            writer.event(
                0,
                EVENT_NO_STRATEGY_START,
                reason="the ServerApp did not call Strategy.start: no rounds were recorded",
            )
        else:
            arrays = starts.result.arrays
            writer.final_model({name: arrays[name].numpy() for name in arrays})
        summary = run_summary(scenario, starts.rounds, writer, control)
        writer.finish(summary)
        finish_trackers(summary)
    return summary


class StrategyStarts:
    """Flower's ``Strategy.start``, replaced while the ServerApp runs by fedsim's loop."""

    def __init__(self, scenario: Scenario, writer: RunWriter, control: RunControl) -> None:
        self.scenario = scenario
        self.writer = writer
        self.control = control
        self.grid: ReachableGrid | None = None
        self.result: Result | None = None
        self.rounds = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original = Strategy.start
        starts = self

        def start(
            strategy: Strategy,
            grid: Grid,
            initial_arrays: ArrayRecord,
            num_rounds: int = 3,
            timeout: float = 3600,
            train_config: ConfigRecord | None = None,
            evaluate_config: ConfigRecord | None = None,
            evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        ) -> Result:
            return starts.start(
                strategy,
                grid,
                initial_arrays,
                num_rounds,
                timeout,
                train_config,
                evaluate_config,
                evaluate_fn,
            )

        Strategy.start = start  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            Strategy.start = original  # type: ignore[method-assign]

    def start(
        self,
        strategy: Strategy,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int,
        timeout: float,
        train_config: ConfigRecord | None,
        evaluate_config: ConfigRecord | None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
    ) -> Result:
        """What ``Strategy.start`` returns, from fedsim's loop over ``num_rounds`` rounds."""
        if grid is not self.grid or self.grid is None:
            raise FedsimError(
                f"{self.scenario.source}: the ServerApp passed Strategy.start a grid other "
                "than the one its main() received; fedsim can only run rounds on its own grid"
            )
        if self.result is not None:
            raise FedsimError(
                f"{self.scenario.source}: the ServerApp called Strategy.start a second time; "
                "fedsim records one strategy run per app run"
            )
        strategy.summary()
        result = Result()
        central = None
        if evaluate_fn is not None:

            def central(rnd: int, arrays: ArrayRecord) -> dict[str, float]:
                metrics = evaluate_fn(rnd, arrays)
                if metrics is not None:
                    result.evaluate_metrics_serverapp[rnd] = metrics
                values = metrics.items() if metrics is not None else []
                return {k: float(v) for k, v in values if isinstance(v, int | float)}

        engine = self.scenario.engine
        settings = LoopSettings(
            rounds=num_rounds,
            seed=self.scenario.seed,
            timeout=timeout,
            evaluate_every=1,
            central=central,
            federated=True,
            train_config=dict(train_config or {}),
            evaluate_config=dict(evaluate_config or {}),
            max_failures=engine.max_failures_per_round,
            max_failure_fraction=engine.max_failure_fraction,
        )
        cohorts = CohortBookkeeping(self.grid.inner, self.writer)
        control = self.control

        def round_end(rnd: int, _arrays: ArrayRecord) -> None:
            cohorts.record(rnd, self.writer)
            self.rounds = rnd
            self.writer.flush()
            if control.on_round_end is not None:
                accuracy = self.writer.latest(keys.PHASE_CENTRAL, keys.METRIC_ACCURACY)
                control.on_round_end(rnd, accuracy)
            if control.stop is not None and control.stop.is_set() and rnd < num_rounds:
                raise RunInterrupted(rnd, num_rounds, self.writer.run_dir, resumable=False)

        state = random.getstate()  # run_rounds seeds Flower's sampling; the app's stays
        try:
            result.arrays = run_rounds(
                grid=self.grid,
                strategy=_Recorded(strategy, result),
                arrays=initial_arrays,
                settings=settings,
                writer=self.writer,
                on_round_end=round_end,
            )
        finally:
            random.setstate(state)
        self.result = result
        return result


class _Recorded:
    """A strategy whose aggregated metrics also go into a Flower ``Result``."""

    def __init__(self, strategy: Strategy, result: Result) -> None:
        self._strategy = strategy
        self._result = result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._strategy, name)

    def aggregate_train(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self._strategy.aggregate_train(server_round, replies)
        if metrics is not None:
            self._result.train_metrics_clientapp[server_round] = metrics
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: list[Message]) -> MetricRecord | None:
        metrics = self._strategy.aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self._result.evaluate_metrics_clientapp[server_round] = metrics
        return metrics
