"""Sweeps: one scenario, a grid of overrides × seeds, one run directory per point.

A researcher's question is rarely one run: "FedAvg or FedAU, under Bernoulli,
Markov or cyclic participation, over three seeds" is 18 runs that differ in a
few keys. A sweep is a scenario file plus those keys' values; each point of the
cross product is an ordinary run (the scenario with ``--set`` overrides) in its
own directory under the sweep directory, named after the values it sets
(``strategy.name=fedau,participation.pattern=markov,seed=2``), so a directory
listing reads like the grid and ``fedsim.analysis`` finds every value in the
run's own ``scenario.toml``.

A run is complete once its ``summary.json`` exists. Running the same sweep
again skips complete runs and redoes the others from scratch, so an interrupted
sweep continues where it stopped; a complete run made from a different scenario
is refused rather than silently mixed in. ``sweep.json`` records the plan and
every run's status. Runs share one Ray runtime (starting Ray costs seconds);
``parallel = K`` runs K of them at a time in worker processes attached to it.

The grid comes from ``--grid key=v1,v2`` options (values read like ``--set``
values: TOML, else a string) or from the scenario's ``[sweep]`` table, which a
plain ``fedsim run`` ignores::

    [sweep]
    seeds = [1, 2, 3]

    [sweep.grid]
    "strategy.name" = ["fedavg", "fedau"]
    participation.pattern = ["bernoulli", "markov", "cyclic"]
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import tomli_w

from fedsim.config import (
    ENGINE_KINDS,
    Scenario,
    apply_overrides,
    parse_override,
    read_toml,
    scenario_from_dict,
)
from fedsim.errors import FedsimError, ScenarioError
from fedsim.flower_logs import flower_quieted, quiet_flower
from fedsim.results import SCENARIO_FILE, SUMMARY_FILE, SWEEP_MANIFEST, atomic_write_bytes

SWEEP_KEYS = ("grid", "seeds")
SEED_KEY = "seed"
MAX_NAME_LENGTH = 160
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@-]+")


# --- the grid --------------------------------------------------------------------------


def split_values(text: str) -> list[str]:
    """Split ``text`` at the commas that are outside brackets, braces and quotes.

    >>> split_values('fedavg,fedau')
    ['fedavg', 'fedau']
    >>> split_values('[32, 32],[64],"a,b"')
    ['[32, 32]', '[64]', '"a,b"']
    """
    parts: list[str] = []
    depth = 0
    quote = ""
    current: list[str] = []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """``"key=v1,v2"`` → ``("key", [v1, v2])``, each value read like a ``--set`` value.

    >>> parse_grid_option("strategy.name=fedavg,fedau")
    ('strategy.name', ['fedavg', 'fedau'])
    >>> parse_grid_option("client.lr=0.1,0.05")
    ('client.lr', [0.1, 0.05])
    """
    key, sep, values_text = text.partition("=")
    values = split_values(values_text) if sep else []
    if not sep or not values_text.strip() or any(not value for value in values):
        raise ScenarioError(
            "--grid", text, "key=value1,value2,... with a dotted key such as client.lr=0.1,0.05"
        )
    parsed = [parse_override(f"{key}={value}", source="--grid") for value in values]
    return parsed[0][0], [value for _, value in parsed]


def parse_seeds(text: str) -> list[int]:
    """``"1,2,3"`` → ``[1, 2, 3]``.

    >>> parse_seeds("1, 2,3")
    [1, 2, 3]
    """
    seeds = []
    for part in split_values(text):
        if not part.isdigit():
            raise ScenarioError("--seeds", text, "comma-separated integers >= 0 such as 1,2,3")
        seeds.append(int(part))
    return _unique_seeds(seeds, "--seeds", text)


def _unique_seeds(seeds: list[int], source: str, key: str) -> list[int]:
    if not seeds:
        raise ScenarioError(source, key, "at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ScenarioError(source, key, "distinct seeds", got=seeds)
    return seeds


def _flatten_grid(table: Mapping[str, Any], source: str, prefix: str) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(value, Mapping):
            grid.update(_flatten_grid(value, source, key))
        elif isinstance(value, list) and value:
            grid[key] = list(value)
        else:
            raise ScenarioError(
                source, f"sweep.grid.{key}", "a non-empty list of values", got=value
            )
    return grid


def sweep_table(raw: Mapping[str, Any], source: str) -> tuple[dict[str, list[Any]], list[int]]:
    """The grid and seeds of a scenario's ``[sweep]`` table (empty when there is none).

    Dotted keys may be quoted (``"strategy.name" = [...]``) or bare (TOML then nests
    them); either way the grid is keyed by the dotted name.

    >>> sweep_table({"sweep": {"seeds": [1, 2], "grid": {"strategy": {"name": ["a", "b"]}}}}, "s")
    ({'strategy.name': ['a', 'b']}, [1, 2])
    """
    table = raw.get("sweep", {})
    if not isinstance(table, Mapping):
        raise ScenarioError(source, "sweep", "a table with grid and seeds", got=table)
    for name in table:
        if name not in SWEEP_KEYS:
            raise ScenarioError(source, f"sweep.{name}", "one of the known keys (grid, seeds)")
    grid_table = table.get("grid", {})
    if not isinstance(grid_table, Mapping):
        raise ScenarioError(source, "sweep.grid", "a table of key = [values]", got=grid_table)
    grid = _flatten_grid(grid_table, source, "")
    seeds = table.get("seeds", [])
    valid = isinstance(seeds, list) and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds
    )
    if not valid:
        raise ScenarioError(source, "sweep.seeds", "a list of integers >= 0", got=seeds)
    if seeds:
        _unique_seeds(seeds, source, "sweep.seeds")
    return grid, list(seeds)


# --- run names ---------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A grid value as written in a run name (TOML-like, strings unquoted).

    >>> format_value(0.1), format_value(True), format_value([32, 64]), format_value("fedau")
    ('0.1', 'true', '[32,64]', 'fedau')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}={format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def run_name(settings: Mapping[str, Any]) -> str:
    """The directory name of one point: ``key=value`` pairs joined by commas, made safe.

    Characters other than letters, digits and ``._,=+@-`` become ``_``; a name longer than
    160 characters is cut and ends in a hash of the full settings.

    >>> run_name({"strategy.name": "fedau", "participation.pattern": "markov", "seed": 2})
    'strategy.name=fedau,participation.pattern=markov,seed=2'
    >>> run_name({"strategy.name": "../strategies/ldawa.py:LDAWA", "seed": 1})
    'strategy.name=.._strategies_ldawa.py_LDAWA,seed=1'
    """
    text = ",".join(f"{key}={format_value(value)}" for key, value in settings.items())
    name = _UNSAFE.sub("_", text)
    if len(name) > MAX_NAME_LENGTH:
        name = f"{name[: MAX_NAME_LENGTH - 9]}-{_digest(settings)}"
    return name


def _digest(settings: Mapping[str, Any]) -> str:
    text = json.dumps(list(settings.items()), default=str, sort_keys=False)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its directory name, the values it sets and its scenario."""

    name: str
    settings: dict[str, Any]
    scenario: Scenario


@dataclass(frozen=True)
class SweepPlan:
    """A sweep before it runs: the scenario, the grid, the seeds and every point."""

    scenario_file: Path
    overrides: tuple[str, ...]
    grid: dict[str, list[Any]]
    seeds: list[int]
    points: list[Point]
    directory: Path

    def run_dir(self, point: Point) -> Path:
        return self.directory / point.name


def plan_sweep(
    scenario_file: str | Path | Scenario,
    *,
    grid: Sequence[str] | Mapping[str, Sequence[Any]] | None = None,
    seeds: str | Sequence[int] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    out: str | Path | None = None,
) -> SweepPlan:
    """Expand a scenario and a grid into validated points.

    ``scenario_file``: a scenario file, or a :class:`~fedsim.config.Scenario` (its
    building blocks passed as objects go to every point). ``grid`` holds ``--grid``
    options (``"key=v1,v2"``) or a mapping ``{"key": [v1, v2]}``; with ``grid`` or
    ``seeds`` left ``None`` the scenario's ``[sweep]`` table gives them; without seeds
    the sweep uses the scenario's own seed. ``overrides`` (``--set``, or a mapping)
    apply to every point before the grid's values. The points vary the last grid key
    fastest and the seed slowest, so an early stop has every configuration at the
    first seed. ``out`` defaults to ``runs/NAME-sweep``.
    """
    objects: dict[str, Any] = {}
    if isinstance(scenario_file, Scenario):
        given = scenario_file
        path, source, base_dir = Path(given.source), given.source, given.base_dir
        raw = given.to_dict()
        objects = dict(given.objects)
    else:
        path = Path(scenario_file)
        source, base_dir = str(path), path.parent
        raw = read_toml(path)
    file_grid, file_seeds = sweep_table(raw, source)
    raw.pop("sweep", None)
    if isinstance(overrides, Mapping):
        override_pairs = list(overrides.items())
        override_texts = tuple(f"{key}={value!r}" for key, value in overrides.items())
    else:
        override_pairs = [parse_override(text) for text in overrides]
        override_texts = tuple(overrides)
    raw = apply_overrides(raw, override_pairs, source)
    if grid is None:
        axes = dict(file_grid)
    elif isinstance(grid, Mapping):
        axes = _grid_from_mapping(grid)
    else:
        axes = _grid_from_options(grid)
    if isinstance(seeds, str):
        seed_list = parse_seeds(seeds)
    elif seeds is not None:
        seed_list = _unique_seeds(list(seeds), "--seeds", "seeds")
    else:
        seed_list = list(file_seeds)
    if SEED_KEY in axes:
        if seeds is not None or file_seeds:
            raise ScenarioError(source, "sweep.grid.seed", "seeds given once (--seeds or grid)")
        seed_list = _unique_seeds(axes.pop(SEED_KEY), source, "sweep.grid.seed")
    base = Scenario.from_dict(raw, source=source, base_dir=base_dir, **objects)
    if not seed_list:
        seed_list = [base.seed]
    points = []
    for seed, values in itertools.product(seed_list, itertools.product(*axes.values())):
        settings = {**dict(zip(axes, values, strict=True)), SEED_KEY: seed}
        point_raw = apply_overrides(base.raw, list(settings.items()), source)
        scenario = Scenario.from_dict(point_raw, source=source, base_dir=base_dir, **objects)
        points.append(Point(run_name(settings), settings, scenario))
    _disambiguate(points)
    directory = Path(out) if out is not None else Path("runs") / f"{base.name}-sweep"
    return SweepPlan(path, override_texts, axes, seed_list, points, directory)


def _grid_from_mapping(grid: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for key, values in grid.items():
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ScenarioError("grid", key, "a non-empty list of values", got=values)
        axes[key] = list(values)
    return axes


def _grid_from_options(options: Iterable[str]) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for option in options:
        key, values = parse_grid_option(option)
        if key in axes:
            raise ScenarioError("--grid", key, "each key in one --grid option")
        axes[key] = values
    return axes


def _disambiguate(points: list[Point]) -> None:
    """Names that sanitising made equal get a hash of their settings appended."""
    counts: dict[str, int] = {}
    for point in points:
        counts[point.name] = counts.get(point.name, 0) + 1
    for index, point in enumerate(points):
        if counts[point.name] > 1:
            name = f"{point.name}-{_digest(point.settings)}"
            points[index] = Point(name, point.settings, point.scenario)
    if len({point.name for point in points}) != len(points):
        raise FedsimError("sweep: two points have the same settings (a value repeats in --grid)")


# --- running ---------------------------------------------------------------------------------


RunFunction = Callable[..., tuple[Path, dict[str, Any]]]


@dataclass(frozen=True)
class SweepEvent:
    """Progress of a sweep: ``skip``, ``start``, ``round``, ``done`` or ``failed``."""

    kind: str
    point: Point
    index: int
    total: int
    round: int = 0
    accuracy: float | None = None
    error: str | None = None


@dataclass
class SweepOutcome:
    """What a call to :func:`run_sweep` did."""

    directory: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def is_complete(run_dir: Path) -> bool:
    """A run is complete once its summary is written (the runner writes it last)."""
    return (run_dir / SUMMARY_FILE).is_file()


def _differences(written: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Dotted keys of ``wanted`` whose value ``written`` lacks or holds differently."""
    from fedsim.analysis import flatten_config

    have = flatten_config(written)
    want = flatten_config(tomllib.loads(tomli_w.dumps(dict(wanted))))
    return [key for key, value in want.items() if key not in have or have[key] != value]


def check_resumable(plan: SweepPlan) -> None:
    """Refuse complete runs made from another scenario and folders that are not runs."""
    for point in plan.points:
        run_dir = plan.run_dir(point)
        if not run_dir.exists():
            continue
        if not run_dir.is_dir():
            raise FedsimError(f"{run_dir}: exists and is not a run directory")
        if is_complete(run_dir):
            written = tomllib.loads((run_dir / SCENARIO_FILE).read_text())
            changed = _differences(written, point.scenario.raw)
            if changed:
                raise FedsimError(
                    f"{run_dir}: complete run of a different scenario ({', '.join(changed[:3])} "
                    "changed); use another --out or delete that run"
                )
        elif any(run_dir.iterdir()) and not (run_dir / SCENARIO_FILE).is_file():
            raise FedsimError(f"{run_dir}: not empty and not a fedsim run directory")


class _Manifest:
    """``sweep.json``: the plan and each run's status, rewritten atomically on change.

    A sweep run again into the same directory with other seeds or grid points keeps
    the earlier invocations' runs in the list (after this plan's), so the analysis
    finds all of them; the plan fields describe the latest invocation."""

    def __init__(self, plan: SweepPlan) -> None:
        self.path = plan.directory / SWEEP_MANIFEST
        planned = [
            {
                "name": point.name,
                "settings": point.settings,
                "status": "complete" if is_complete(plan.run_dir(point)) else "pending",
            }
            for point in plan.points
        ]
        names = {run["name"] for run in planned}
        earlier = [run for run in self._earlier_runs() if run.get("name") not in names]
        self.content: dict[str, Any] = {
            "format": 1,
            "scenario": str(plan.scenario_file.resolve()),
            "overrides": list(plan.overrides),
            "grid": plan.grid,
            "seeds": plan.seeds,
            "runs": planned + earlier,
        }
        self.runs = {run["name"]: run for run in self.content["runs"]}
        self.write()

    def _earlier_runs(self) -> list[dict[str, Any]]:
        """The runs an existing ``sweep.json`` here lists (none if it is unreadable)."""
        try:
            runs = json.loads(self.path.read_text()).get("runs", [])
        except (OSError, ValueError, AttributeError):
            return []
        return [run for run in runs if isinstance(run, dict) and isinstance(run.get("name"), str)]

    def update(self, name: str, **fields: Any) -> None:
        run = self.runs[name]
        run.pop("error", None)
        run.update(fields)
        self.write()

    def settle(self, plan: SweepPlan) -> None:
        """After a stop: a run left "running" or "interrupted" is "complete" if its
        results are all on disk, else "interrupted"."""
        for point in plan.points:
            run = self.runs[point.name]
            if run["status"] in ("running", "interrupted"):
                run["status"] = "complete" if is_complete(plan.run_dir(point)) else "interrupted"
        self.write()

    def write(self) -> None:
        self.content["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        text = json.dumps(self.content, indent=1, default=str)
        atomic_write_bytes(self.path, text.encode())


def run_sweep(
    plan: SweepPlan,
    *,
    parallel: int = 1,
    on_event: Callable[[SweepEvent], None] | None = None,
    run: RunFunction | None = None,
) -> SweepOutcome:
    """Run every point of ``plan`` that is not complete yet; returns what happened.

    Runs share the Ray runtime of this process (started here, and stopped at the
    end, when none is running); with ``parallel > 1`` that many worker processes
    attach to it and run points side by side. Points on the inline engine need no
    Ray: they run here, or with ``parallel > 1`` in that many worker processes.
    Points on Flower's own engine run one at a time in a fresh process (Flower
    stops Ray when it ends). A scenario mistake stops the sweep; any other
    failure is recorded in ``sweep.json`` and the sweep goes on; after a stop,
    ``sweep.json`` says which runs are complete on disk.

    ``run`` replaces :func:`fedsim.simulation.run_scenario` (same signature) for every
    point, in this process and without starting Ray: a dry run, or a custom runner.
    """
    if parallel < 1:
        raise FedsimError(f"--parallel: expected an integer >= 1, got {parallel}")
    if run is not None and parallel != 1:
        raise FedsimError("run_sweep: a custom run function runs in this process (parallel=1)")
    if parallel != 1 and any(point.scenario.objects for point in plan.points):
        raise FedsimError(
            "--parallel: a scenario with building blocks passed as Python objects "
            "runs in this process (parallel=1)"
        )
    check_resumable(plan)
    plan.directory.mkdir(parents=True, exist_ok=True)
    manifest = _Manifest(plan)
    outcome = SweepOutcome(plan.directory)
    total = len(plan.points)

    def emit(kind: str, index: int, **fields: Any) -> None:
        if on_event is not None:
            on_event(SweepEvent(kind, plan.points[index], index, total, **fields))

    pending = []
    for index, point in enumerate(plan.points):
        if is_complete(plan.run_dir(point)):
            outcome.skipped.append(point.name)
            emit("skip", index)
        else:
            pending.append(index)
    context = _Context(plan, manifest, outcome, emit)
    try:
        _run_pending(context, pending, parallel, run)
    except BaseException:  # Ctrl-C may land between a run's last write and its status
        manifest.settle(plan)
        raise
    return outcome


def _run_pending(
    context: _Context, pending: list[int], parallel: int, run: RunFunction | None
) -> None:
    """Run the runs not complete yet: inline ones without Ray, Ray ones in one Ray
    runtime, Flower's in processes of their own (its engine shuts Ray down)."""
    if run is not None:
        for index in pending:
            context.run_here(index, run)
        return
    points = context.plan.points
    kinds = {
        kind: [i for i in pending if points[i].scenario.engine.kind == kind]
        for kind in ENGINE_KINDS
    }
    _run_side_by_side(context, kinds["inline"], parallel, None)
    if kinds["ray"]:
        from fedsim.engine.ray_runtime import ray_runtime

        first = points[kinds["ray"][0]].scenario
        engine = first.engine
        with ray_runtime(
            engine.ray_address, first.source, engine.allow_unauthenticated_cluster
        ) as address:
            _run_side_by_side(context, kinds["ray"], parallel, address)
    for index in kinds["flower"]:
        _run_parallel(context, [index], 1, None)


def _run_side_by_side(
    context: _Context, indices: list[int], parallel: int, ray_address: str | None
) -> None:
    """``parallel`` worker processes (joining ``ray_address`` if any) at a time, or here."""
    if parallel > 1 and len(indices) > 1:
        _run_parallel(context, indices, min(parallel, len(indices)), ray_address)
    else:
        for index in indices:
            context.run_here(index)


class WorkerFailure(Exception):
    """A run that failed in a worker process, carried back as plain text (always picklable)."""

    def __init__(self, message: str, scenario_mistake: bool) -> None:
        super().__init__(message, scenario_mistake)
        self.message = message
        self.scenario_mistake = scenario_mistake


@dataclass
class _Context:
    plan: SweepPlan
    manifest: _Manifest
    outcome: SweepOutcome
    emit: Callable[..., None]

    def begin(self, index: int) -> tuple[Point, Path]:
        point = self.plan.points[index]
        run_dir = self.plan.run_dir(point)
        if run_dir.exists():  # an interrupted or failed attempt: start it again
            shutil.rmtree(run_dir)
        self.manifest.update(point.name, status="running")
        self.emit("start", index)
        return point, run_dir

    def finish(self, index: int, summary: Mapping[str, Any]) -> None:
        point = self.plan.points[index]
        self.manifest.update(point.name, status="complete", wall_time_s=summary.get("wall_time_s"))
        self.outcome.ran.append(point.name)
        self.emit("done", index, accuracy=summary.get("final_accuracy"))

    def fail(self, index: int, failure: WorkerFailure) -> None:
        """Record a failed run; a scenario mistake stops the sweep (every run would repeat it)."""
        point = self.plan.points[index]
        self.manifest.update(point.name, status="failed", error=failure.message)
        if failure.scenario_mistake:
            raise FedsimError(failure.message.partition(": ")[2])
        self.outcome.failed[point.name] = failure.message
        self.emit("failed", index, error=failure.message)

    def run_here(self, index: int, run: RunFunction | None = None) -> None:
        if run is None:
            from fedsim.simulation import run_scenario

            run = run_scenario
        point, run_dir = self.begin(index)

        def on_round_end(rnd: int, accuracy: float | None) -> None:
            self.emit("round", index, round=rnd, accuracy=accuracy)

        try:
            _, summary = run(point.scenario, run_dir, on_round_end=on_round_end)
        except Exception as error:
            self.fail(index, _failure(error))
            return
        self.finish(index, summary)


def _failure(error: Exception) -> WorkerFailure:
    if isinstance(error, WorkerFailure):
        return error
    return WorkerFailure(f"{type(error).__name__}: {error}", isinstance(error, ScenarioError))


def _run_parallel(
    context: _Context, indices: list[int], workers: int, ray_address: str | None
) -> None:
    executor = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_worker_init,
        initargs=(ray_address,),
    )
    futures: dict[Future[dict[str, Any]], int] = {}
    try:
        for index in indices:
            point, run_dir = context.begin(index)
            scenario = point.scenario
            job = (scenario.raw, scenario.source, str(scenario.base_dir), str(run_dir))
            futures[executor.submit(_run_in_worker, *job)] = index
        for future in as_completed(futures):
            index = futures[future]
            try:
                summary = future.result()
            except Exception as error:
                context.fail(index, _failure(error))
            else:
                context.finish(index, summary)
    except BaseException:  # run_sweep settles the statuses
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown()


def _worker_init(ray_address: str | None) -> None:
    quiet_flower()
    if ray_address is not None:
        from fedsim.engine.ray_runtime import worker_environment

        os.environ.update(worker_environment(ray_address))  # read once, when ray loads
        import ray

        ray.init(address=ray_address, logging_level=logging.ERROR)


def _run_in_worker(raw: dict[str, Any], source: str, base_dir: str, run_dir: str) -> dict[str, Any]:
    from fedsim.simulation import run_scenario

    try:
        scenario = scenario_from_dict(raw, source=source, base_dir=Path(base_dir))
        _, summary = run_scenario(scenario, Path(run_dir))
    except Exception as error:  # exceptions with custom constructors do not unpickle
        raise _failure(error) from None
    return summary


# --- the public functions (fedsim.sweep(...), docs/api.md) ----------------------------


def sweep(
    scenario: Scenario | str | Path | SweepPlan,
    *,
    grid: Mapping[str, Sequence[Any]] | Sequence[str] | None = None,
    seeds: Sequence[int] | str | None = None,
    out: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    parallel: int = 1,
    on_event: Callable[[SweepEvent], None] | None = None,
    verbose: bool = False,
) -> SweepOutcome:
    """Run ``scenario`` over ``grid`` × ``seeds``, one run directory each, under ``out``.

    ``grid``: ``{"client.lr": [0.01, 0.1]}`` (or ``--grid`` strings); ``None`` takes
    the scenario's ``[sweep]`` table. Complete runs are skipped, so calling it again
    continues an interrupted sweep. Returns what ran, was skipped and failed; its
    ``directory`` loads with :func:`fedsim.analysis.load_sweep`. ``parallel``: runs
    at a time (worker processes; 1 when the scenario holds Python objects).
    ``scenario`` may be a plan from :func:`plan_sweep` (then the other
    planning arguments are not taken). ``verbose``: let Flower's INFO lines through (of
    the runs in this process; worker processes keep them out).
    """
    if isinstance(scenario, SweepPlan):
        if grid is not None or seeds is not None or out is not None or overrides:
            raise FedsimError("sweep: a planned sweep takes no grid, seeds, out or overrides")
        planned = scenario
    else:
        planned = plan_sweep(scenario, grid=grid, seeds=seeds, overrides=overrides, out=out)
    with flower_quieted(not verbose):
        return run_sweep(planned, parallel=parallel, on_event=on_event)
