"""fedsim's public run functions, ``fedsim.run`` and ``fedsim.resume`` (see :mod:`fedsim.api`).

Three verbs over one noun. A :class:`~fedsim.config.Scenario` is read from a file
(:meth:`Scenario.from_file`) or a dict (:meth:`Scenario.from_dict`), changed with
:meth:`Scenario.with_overrides` and given Python objects as building blocks with
:meth:`Scenario.with_objects`; :func:`run` runs it and returns the run as
:func:`fedsim.analysis.load_run` reads it back; :func:`sweep` runs it over a grid
and seeds; :func:`resume` continues an interrupted run. ``fedsim run``,
``fedsim sweep`` and ``fedsim resume`` are these functions plus a progress bar, so
a mistake raises the same :class:`~fedsim.errors.FedsimError` (one line) that the
CLI prints. The stability promise is in docs/api.md.

This module imports nothing heavy at import time: ``import fedsim`` stays light.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.config import Scenario, override_pairs
from fedsim.errors import FedsimError
from fedsim.flower_logs import flower_quieted

if TYPE_CHECKING:
    from fedsim.analysis.runs import Run
    from fedsim.flower_project import FlowerProject

ProgressCallback = Callable[[int, float | None], None]

__all__ = ["default_run_dir", "resume", "run", "run_app"]


def default_run_dir(scenario: Scenario | FlowerProject) -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS``: where a run (of a scenario or a Flower app) goes
    without ``out``."""
    return Path("runs") / f"{scenario.name}-{datetime.now():%Y%m%d-%H%M%S}"


def _scenario(
    scenario: Scenario | str | Path,
    overrides: Mapping[str, Any] | Iterable[str] | None,
    engine: str | None,
    objects: Mapping[str, Any],
) -> Scenario:
    changes = dict(override_pairs(overrides))
    if engine is not None:  # as the CLI's --engine: one more override
        changes["engine.kind"] = engine
    if isinstance(scenario, Scenario):
        if changes:
            scenario = scenario.with_overrides(changes)
    elif isinstance(scenario, str | Path):
        scenario = Scenario.from_file(scenario, changes)
    else:
        raise FedsimError(f"expected a Scenario or a scenario file, got {type(scenario).__name__}")
    if any(value is not None for value in objects.values()):
        scenario = scenario.with_objects(**objects)
    return scenario


def tracker_overrides(trackers: Sequence[str] | None) -> list[str]:
    """``trackers`` as the ``--set`` line ``--log`` makes.

    >>> tracker_overrides(["jsonl", "wandb"]), tracker_overrides(None)
    (['log.trackers=["jsonl", "wandb"]'], [])
    """
    return [f"log.trackers={json.dumps(list(trackers))}"] if trackers else []


def run(
    scenario: Scenario | str | Path,
    *,
    out: str | Path | None = None,
    engine: str | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    strategy: Any = None,
    participation: Any = None,
    client_app: Any = None,
    model_factory: Any = None,
    trackers: Sequence[str] | None = None,
    on_round_end: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    verbose: bool = False,
) -> Run:
    """Run a scenario into ``out`` and return it as :func:`fedsim.analysis.load_run` reads it.

    ``scenario``: a :class:`Scenario` or a scenario file. ``out``: the run directory
    (default ``runs/NAME-TIME``; it must be empty or absent). ``engine``: ``"ray"``,
    ``"inline"`` or ``"flower"`` (``engine.kind``). ``overrides``: dotted keys, as
    ``--set``. ``strategy``, ``participation``, ``client_app``, ``model_factory``:
    building blocks as Python objects (:meth:`Scenario.with_objects`). ``trackers``:
    extra sinks for the metrics (``[log] trackers``), e.g. ``["tensorboard"]``.
    ``on_round_end(round, central_accuracy)`` is called after every round; setting
    ``stop`` ends the run after the current round with a checkpoint
    (:class:`~fedsim.errors.RunInterrupted` is raised). ``verbose``: let Flower's INFO
    lines through (one or two a round), as ``--verbose``. Mistakes raise
    :class:`~fedsim.errors.FedsimError` with the CLI's one-line message.
    """
    from fedsim.analysis.runs import load_run
    from fedsim.simulation.entry import run_scenario

    objects = {
        "strategy": strategy,
        "participation": participation,
        "client_app": client_app,
        "model_factory": model_factory,
    }
    resolved = _scenario(scenario, overrides, engine, objects)
    if trackers is not None:
        resolved = resolved.with_overrides({"log.trackers": list(trackers)})
    run_dir = Path(out) if out is not None else default_run_dir(resolved)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FedsimError(f"{run_dir}: run directory exists and is not empty (use --out)")
    with flower_quieted(not verbose):
        run_scenario(resolved, run_dir, on_round_end=on_round_end, stop=stop)
    return load_run(run_dir)


def run_app(
    project: str | Path,
    *,
    out: str | Path | None = None,
    engine: str | None = None,
    run_config: Sequence[str] | None = None,
    scenario: str | Path | None = None,
    overrides: Iterable[str] | None = None,
    trackers: Sequence[str] | None = None,
    on_round_end: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    verbose: bool = False,
) -> Run:
    """Run a Flower app project (a folder with Flower's ``pyproject.toml``) on fedsim's
    engine, as ``fedsim run DIR``; returns the run as :func:`fedsim.analysis.load_run`
    reads it.

    ``run_config``: Flower's ``--run-config`` overrides (``"key=value ..."`` or one TOML
    file). ``scenario``: a fedsim TOML overlay for what Flower has no words for
    (``[participation]``, ``[engine]``, ``seed``, ``data.num_clients``), on top of the
    project's ``[tool.fedsim]`` table; ``overrides``: dotted keys on top, as ``--set``.
    ``engine``: ``"ray"`` (default) or ``"inline"``. ``trackers``, ``verbose``: as
    :func:`run`'s.
    Stopping (``stop``) ends the run after the current round; a Flower app's run cannot
    be resumed.
    """
    from fedsim.analysis.runs import load_run
    from fedsim.flower_project import read_project
    from fedsim.simulation.flower_app import app_scenario, run_flower_app
    from fedsim.simulation.session import RunControl

    project_dir = Path(project)
    read = read_project(
        project_dir,
        run_config=list(run_config or []),
        overlay=Path(scenario) if scenario is not None else None,
        overrides=[*(overrides or []), *tracker_overrides(trackers)],
    )
    resolved = app_scenario(read, engine)
    run_dir = Path(out) if out is not None else default_run_dir(resolved)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FedsimError(f"{run_dir}: run directory exists and is not empty (use --out)")
    with flower_quieted(not verbose):
        run_flower_app(read, resolved, run_dir, RunControl(on_round_end=on_round_end, stop=stop))
    return load_run(run_dir)


def resume(
    run_dir: str | Path,
    *,
    allow_pickle: bool = False,
    on_round_end: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    verbose: bool = False,
    **objects: Any,
) -> Run:
    """Continue an interrupted run from its checkpoint (``fedsim resume``); returns the run.

    A run given building blocks as objects needs them again: ``resume(path,
    strategy=MyStrategy)``. ``allow_pickle``: as ``--allow-pickle``; ``verbose``: as
    :func:`run`'s.
    """
    from fedsim.analysis.runs import load_run
    from fedsim.simulation.entry import resume_run

    with flower_quieted(not verbose):
        resume_run(
            Path(run_dir),
            on_round_end=on_round_end,
            stop=stop,
            allow_pickle=allow_pickle,
            objects=objects,
        )
    return load_run(run_dir)
