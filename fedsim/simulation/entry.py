"""The entry points of a run: start one (:func:`run_scenario`) or continue an
interrupted one from its checkpoint (:func:`resume_run`). Both validate, build the
run once (:func:`fedsim.simulation.setup.build_run`), launch the scenario's engine, and
finish the run directory: final model, summary, checkpoint removed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsim.config import Scenario, read_toml
from fedsim.data.prepare import ProxySet
from fedsim.data.store import ClientDataStore
from fedsim.errors import FedsimError
from fedsim.results import (
    CLIENT_DATA_DIR,
    EVENT_RESUMED,
    SCENARIO_FILE,
    RunWriter,
)
from fedsim.simulation.checkpoint import (
    Checkpoint,
    RunInterrupted,
    load_checkpoint,
    remove_checkpoint,
)
from fedsim.simulation.launch import ENGINES, Launcher
from fedsim.simulation.session import RunControl, privacy_summary, run_summary, tracked
from fedsim.simulation.setup import build_run, validate

ProgressCallback = Callable[[int, float | None], None]


def run_scenario(
    scenario: Scenario,
    run_dir: Path,
    *,
    on_round_end: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    launcher: Launcher | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run a scenario into ``run_dir``; returns the directory and the summary.

    ``stop``: set it (from a signal handler, another thread) to end the run after
    the current round with a checkpoint; :class:`RunInterrupted` is raised then.
    ``launcher``: where the clients are (default: the scenario's engine); an exported
    Flower app passes its own, which runs the session on Flower's grid.
    """
    validate(scenario)
    control = RunControl(on_round_end=on_round_end, stop=stop)
    writer = RunWriter(run_dir, scenario.raw)
    return run_dir, _execute(scenario, run_dir, writer, control, None, launcher)


def resume_run(
    run_dir: Path,
    *,
    on_round_end: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    allow_pickle: bool = False,
    objects: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Continue an unfinished run from its checkpoint; returns the directory and summary.

    The scenario is rebuilt from the run's own ``scenario.toml`` (relative paths
    resolved against the original scenario's folder) and its ``client_data`` store;
    the state is the checkpoint's. The final results equal those of an
    uninterrupted run (timing rows aside). Raises a FedsimError naming the
    directory when it holds no unfinished run. ``allow_pickle``: load a strategy
    state pickled under ``[checkpoint] allow_pickle`` (it runs code from the file).
    ``objects``: the building blocks the run was given as Python objects
    (:meth:`fedsim.config.Scenario.with_objects`), given again.
    """
    run_dir = Path(run_dir)
    checkpoint = load_checkpoint(run_dir, allow_pickle=allow_pickle)
    raw = read_toml(run_dir / SCENARIO_FILE)
    scenario = Scenario.from_dict(
        raw, source=checkpoint.source, base_dir=Path(checkpoint.base_dir), **(objects or {})
    )
    if scenario.engine.kind == "flower":
        raise FedsimError(f"{run_dir}: runs on Flower's engine cannot be resumed")
    validate(scenario)
    writer = RunWriter(run_dir, scenario.raw)
    writer.restore(checkpoint.results)
    writer.event(checkpoint.round, EVENT_RESUMED, after_round=checkpoint.round)
    control = RunControl(on_round_end=on_round_end, stop=stop, resume=checkpoint)
    data = _stored_data(scenario, run_dir, checkpoint)
    return run_dir, _execute(scenario, run_dir, writer, control, data)


def _stored_data(
    scenario: Scenario, run_dir: Path, checkpoint: Checkpoint
) -> tuple[ClientDataStore, ProxySet | None] | None:
    """The run's client data store, if it is there and opens (else it is rebuilt)."""
    if scenario.data.dataset is None:
        return None
    try:
        store = ClientDataStore.open(run_dir / CLIENT_DATA_DIR)
    except (OSError, ValueError):
        return None
    if store.num_clients != scenario.data.num_clients:
        return None
    return store, checkpoint.proxy_data


def _execute(
    scenario: Scenario,
    run_dir: Path,
    writer: RunWriter,
    control: RunControl,
    data: tuple[ClientDataStore, ProxySet | None] | None,
    launcher: Launcher | None = None,
) -> dict[str, Any]:
    """Build, run the rounds, write the final model and the summary.

    A run that stops on an error still flushes its results so far, with the
    error as a ``run_stopped`` event. The scenario's trackers ([log] trackers) get
    the rows of every round as it ends, and the summary; a run that stops early ends
    their runs as failed (an error) or killed (interrupted, resumable).
    """
    with tracked(scenario, run_dir, writer, control) as finish_trackers:
        try:
            setup = build_run(scenario, run_dir, data=data)
            writer.client_facts(setup.client_facts())
            if setup.system is not None:
                writer.devices(setup.system.profiles.to_frame())
            arrays = (launcher or ENGINES[scenario.engine.kind])(setup, writer, control)
        except RunInterrupted:
            raise
        except BaseException as error:
            writer.stopped(error)
            raise
        writer.final_model({name: arrays[name].numpy() for name in arrays})
        summary = {
            **run_summary(scenario, scenario.rounds, writer, control),
            **privacy_summary(scenario, writer),
        }
        writer.finish(summary)
        finish_trackers(summary)
    remove_checkpoint(run_dir)
    return summary
