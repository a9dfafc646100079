"""Results pages of the seed papers: the half of ``scenarios/*/make_table.py`` they share.

Each paper family under ``scenarios/`` (FedAU, FedLAW, gossip) has a script that runs a
grid of runs and writes a results page under ``docs/``. The script keeps what is the
paper's own — which scenarios and grid, which metric, the paper's diagnostic (FedAU's ω
against 1/p_n, FedLAW's γ, the node spread of gossip) and the page's prose — and takes the
rest from here:

- the command line every such script has (:func:`argument_parser`: seeds, runs folder,
  page, ``--set`` overrides for a quick pass, ``--table-only``, ``--no-doc``);
- running: :class:`Sweep` is one ``fedsim sweep`` of a page (it plans the sweep and
  prints the equivalent ``fedsim sweep`` command), :func:`run_plans` runs the missing
  points of several sweeps on one Ray runtime, and the wall time of the last invocation
  that ran something is kept as an :class:`Invocation` beside the runs;
- one row per run: :func:`run_table` reads finished runs with :mod:`fedsim.analysis`
  (``load_runs`` and ``run_results``: final and best value, rounds to a target) and adds
  the run's own wall time and whatever per-run numbers the paper needs;
- tables over seeds: :func:`mean_std` (mean ± sample std), :func:`grouped_markdown`
  (one row per configuration), :func:`pivot_markdown` (configurations down, settings
  across) and :func:`paired_differences` (a method minus the others, paired by seed: at a
  seed every method sees the same data, split and initial model);
- the page: :func:`machine` and :func:`provenance`, :func:`command` (the command line that
  regenerated it, shown on the page) and :func:`write_page` (a whole page, or the part
  between two markers of a hand-written one).

Everything here reads runs through the public names of :mod:`fedsim.analysis` and
:mod:`fedsim.simulation.sweep`. The only places that reach into the training side are the two
functions of the last section, :func:`run_scenario_into` and
:func:`evaluate_final_model`, kept together so that they are easy to re-point.

>>> mean_std([0.9, 0.92, 0.94], digits=1, scale=100)
'92.0 ± 2.0'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim.analysis import SEED_COLUMN, load_run, load_runs, run_results
from fedsim.errors import FedsimError
from fedsim.flower_logs import quiet_flower
from fedsim.results import CLIENT_DATA_DIR
from fedsim.simulation.sweep import Point, SweepEvent, SweepPlan, is_complete, plan_sweep, run_sweep

INVOCATION_FILE = "make_table.json"  # under the runs folder: the last invocation that ran
EMPTY = "—"

# --- the command line ------------------------------------------------------------------------


def parse_seeds(values: Sequence[str]) -> list[int]:
    """Seeds given as ``1,2,3`` or ``1 2 3`` (or both).

    >>> parse_seeds(["1,2", "3"])
    [1, 2, 3]
    """
    return [int(s) for value in values for s in value.split(",") if s]


def argument_parser(
    description: str, *, seeds: Sequence[int], runs: Path, doc: Path
) -> argparse.ArgumentParser:
    """The options every results script has; a script adds its own.

    ``--seeds`` (``1,2,3`` or ``1 2 3``), ``--runs`` (where the runs go; finished ones are
    reused), ``--doc`` (the page), ``--set KEY=VALUE`` (an override for every run, after
    the script's own: ``--set rounds=4`` is a quick pass), ``--table-only`` (run nothing)
    and ``--no-doc`` (print the tables, write no page).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", nargs="+", default=[",".join(map(str, seeds))])
    parser.add_argument("--runs", type=Path, default=runs, help=f"default {runs}")
    parser.add_argument("--doc", type=Path, default=doc, help=f"default {doc}")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for every run, after the script's own (e.g. rounds=4)",
    )
    parser.add_argument("--table-only", action="store_true", help="run nothing")
    parser.add_argument("--no-doc", action="store_true", help="print the tables only")
    return parser


def command(script: str, argv: Sequence[str]) -> str:
    """The shell command that ran ``script`` with ``argv``, as a page shows it.

    >>> command("scenarios/gossip/make_table.py", ["--seeds", "1", "--set", 'model.name="mlp"'])
    '.venv/bin/python scenarios/gossip/make_table.py --seeds 1 --set \\'model.name="mlp"\\''
    """
    return " ".join(shlex.quote(word) for word in [".venv/bin/python", script, *argv])


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when under it (as the docs show paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --- running ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """One ``fedsim sweep`` of a results page: a scenario file, its grid and overrides.

    ``name`` is the sweep's folder under the page's runs folder. :meth:`plan` is the
    :func:`fedsim.simulation.sweep.plan_sweep` of it and :meth:`command` the equivalent
    ``fedsim sweep`` command line, into the same directories.
    """

    scenario: Path
    name: str
    grid: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()

    def plan(self, runs: Path, seeds: Sequence[int], extra: Sequence[str] = ()) -> SweepPlan:
        return plan_sweep(
            self.scenario,
            grid=list(self.grid),
            seeds=list(seeds),
            overrides=[*self.overrides, *extra],
            out=runs / self.name,
        )

    def command(self, runs: Path, seeds: Sequence[int], extra: Sequence[str] = ()) -> str:
        words = ["fedsim", "sweep", shown_path(self.scenario)]
        for override in (*self.overrides, *extra):
            words += ["--set", override]
        for grid in self.grid:
            words += ["--grid", grid]
        words += ["--seeds", ",".join(map(str, seeds)), "--out", str(runs / self.name)]
        return " ".join(shlex.quote(w) for w in words)


@dataclass(frozen=True)
class Invocation:
    """The wall time of one invocation of a results script that ran something."""

    started: str
    finished: str
    wall_s: float
    ran: int
    load_start: float
    load_end: float

    def save(self, runs: Path) -> None:
        """Keep it beside the runs (read back by :meth:`last`)."""
        runs.mkdir(parents=True, exist_ok=True)
        (runs / INVOCATION_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def last(cls, runs: Path) -> Invocation | None:
        """The last invocation kept under ``runs``, or None."""
        path = runs / INVOCATION_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (TypeError, ValueError):  # another layout (the scripts' files before this module)
            return None


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M %Z")


def _load() -> float:
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else float("nan")


def print_event(event: SweepEvent) -> None:
    """One line per run started, done, skipped or failed."""
    if event.kind in ("start", "done", "skip", "failed"):
        extra = f" acc {event.accuracy:.3f}" if event.accuracy is not None else ""
        print(f"{time.strftime('%H:%M:%S')} {event.kind:6s} {event.point.name}{extra}", flush=True)


def pending_runs(plans: Sequence[SweepPlan]) -> int:
    """How many points of ``plans`` are not complete yet."""
    return sum(not is_complete(plan.run_dir(p)) for plan in plans for p in plan.points)


def run_plans(
    plans: Sequence[SweepPlan],
    *,
    parallel: int = 1,
    num_cpus: int | None = None,
    on_event: Callable[[SweepEvent], None] | None = print_event,
) -> Invocation | None:
    """Run every missing point of ``plans`` on one Ray runtime (started once, here).

    Returns the invocation's wall time, or None when every point was complete already.
    A failed run stops the script (``SystemExit`` naming the runs).
    """
    ran = pending_runs(plans)
    if not ran:
        return None
    from fedsim.engine.ray_runtime import local_ray

    quiet_flower()
    started, load_start, clock = _now(), _load(), time.perf_counter()
    with local_ray("paper tables", num_cpus=num_cpus):
        for plan in plans:
            outcome = run_sweep(plan, parallel=parallel, on_event=on_event)
            if outcome.failed:
                raise SystemExit(f"{plan.directory}: failed runs {outcome.failed}")
    wall = round(time.perf_counter() - clock, 1)
    return Invocation(started, _now(), wall, ran, load_start, _load())


def run_scenarios(jobs: Sequence[tuple[Path, Sequence[str], Path]]) -> Invocation | None:
    """Run each (scenario file, overrides, run directory) of ``jobs`` on one Ray runtime,
    for the runs of a page that are not one sweep; returns the invocation's wall time, or
    None when there was nothing to run."""
    if not jobs:
        return None
    from fedsim.engine.ray_runtime import local_ray

    quiet_flower()
    started, load_start, clock = _now(), _load(), time.perf_counter()
    with local_ray("paper tables"):
        for number, (scenario_file, overrides, run_dir) in enumerate(jobs, start=1):
            seconds = run_scenario_into(scenario_file, overrides, run_dir)
            print(f"[{number}/{len(jobs)}] {run_dir.name}: {seconds:.1f} s", flush=True)
    wall = round(time.perf_counter() - clock, 1)
    return Invocation(started, _now(), wall, len(jobs), load_start, _load())


def complete_runs(plan: SweepPlan) -> dict[Path, Point]:
    """The complete runs of ``plan``: run directory → its point (settings, scenario)."""
    return {plan.run_dir(p): p for p in plan.points if is_complete(plan.run_dir(p))}


# --- one row per run -------------------------------------------------------------------------

Extra = Callable[[Path, pd.DataFrame], Mapping[str, Any]]


def run_table(
    runs: Mapping[Path, Mapping[str, Any]] | Sequence[Path],
    metric: str | Sequence[str] = "accuracy",
    *,
    phase: str | None = None,
    rounds: tuple[int | None, int | None] = (None, None),
    targets: Sequence[float] = (),
    extra: Extra | None = None,
) -> pd.DataFrame:
    """One row per run: :func:`fedsim.analysis.run_results` plus what a page needs.

    ``runs`` is a list of run directories, or a mapping from each to labels of its own
    (pattern, method, ...) that become columns. ``metric`` may list several names: each
    run uses the first it recorded at run level. ``rounds`` = (first, last) keeps only
    those rounds (either end open with None), so "final" is the value at the last kept
    round and "best" ignores the others. Columns: ``path``, the labels, ``run``, the
    scenario keys (``seed``, ``strategy.name``, ...), ``metric``, ``final``, ``best``,
    ``best_round``, ``rounds_to_{target:g}`` per target (NaN when not reached),
    ``wall_s`` and ``run_rounds`` (from the run's summary) and the columns that
    ``extra(path, frame)`` returns for the run's (round-limited) metrics frame.
    """
    labelled = dict(runs) if isinstance(runs, Mapping) else {Path(p): {} for p in runs}
    names = [metric] if isinstance(metric, str) else list(metric)
    first, last = rounds
    rows = []
    for path, labels in labelled.items():
        frame = load_runs([path])
        if first is not None:
            frame = frame[frame["round"] >= first]
        if last is not None:
            frame = frame[frame["round"] <= last]
        recorded = set(frame.loc[frame["client"].isna(), "metric"])
        name = next((m for m in names if m in recorded), names[0])
        result = run_results(frame, name, phase=phase)
        row: dict[str, Any] = {"path": Path(path), **labels, **result.iloc[0].to_dict()}
        row["metric"] = name
        for target in targets:
            reached = run_results(frame, name, phase=phase, target=target)
            row[f"rounds_to_{target:g}"] = reached["rounds_to_target"].iloc[0]
        row.pop("rounds_to_target", None)
        summary = load_run(path).summary or {}
        row["wall_s"] = float(summary.get("wall_time_s", np.nan))
        row["run_rounds"] = int(summary.get("rounds", frame["round"].max()))
        if extra is not None:
            row.update(extra(Path(path), frame))
        rows.append(row)
    if not rows:  # no finished run yet: an empty table, not a frame without columns
        return pd.DataFrame(columns=["path", "run", SEED_COLUMN, "final", "best", "wall_s"])
    return pd.DataFrame(rows)


# --- tables over seeds -----------------------------------------------------------------------


def mean_std(
    values: Iterable[float], *, digits: int = 3, scale: float = 1.0, lone_std: bool = False
) -> str:
    """``mean ± std`` over seeds (sample std, ddof 1) with ``digits`` decimals.

    Values are multiplied by ``scale`` first (100 for percent). No value gives "—"; one
    value is shown alone, or as ``x ± 0`` with ``lone_std``.

    >>> mean_std([1.0, 2.0, 3.0], digits=1), mean_std([0.5]), mean_std([0.5], lone_std=True)
    ('2.0 ± 1.0', '0.500', '0.500 ± 0.000')
    >>> mean_std([])
    '—'
    """
    array = np.asarray(list(values), dtype=float) * scale
    if len(array) == 0:
        return EMPTY
    if len(array) == 1 and not lone_std:
        return f"{array[0]:.{digits}f}"
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return f"{array.mean():.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table (no trailing newline).

    >>> print(markdown_table(["a", "b"], [[1, "x"]]))
    | a | b |
    |---|---|
    | 1 | x |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _select(runs: pd.DataFrame, by: Sequence[str], key: Sequence[Any]) -> pd.DataFrame:
    mask = np.ones(len(runs), dtype=bool)
    for column, value in zip(by, key, strict=True):
        mask &= (runs[column] == value).to_numpy()
    return runs[mask]


def grouped_markdown(
    runs: pd.DataFrame,
    by: Sequence[str],
    columns: Mapping[str, Callable[[pd.DataFrame], str]],
    *,
    order: Sequence[Sequence[Any]] | None = None,
    labels: Mapping[str, Mapping[Any, str]] | None = None,
    keep_empty: bool = False,
) -> str:
    """One row per configuration (the values of ``by``), one column per cell function.

    ``order`` lists the configurations (default: as they first appear in ``runs``);
    a configuration without runs is left out unless ``keep_empty``. ``labels`` maps a
    ``by`` column's values to the text shown. Each of ``columns`` gets the
    configuration's runs (one row per seed) and returns a cell.

    >>> runs = pd.DataFrame({"method": ["a", "a", "b"], "final": [0.5, 0.7, 0.4]})
    >>> print(grouped_markdown(runs, ["method"], {"final": lambda g: mean_std(g["final"])}))
    | method | final |
    |---|---|
    | a | 0.600 ± 0.141 |
    | b | 0.400 |
    """
    keys = (
        [tuple(k) for k in order]
        if order is not None
        else list(dict.fromkeys(runs[list(by)].itertuples(index=False, name=None)))
    )
    shown = labels or {}
    rows = []
    for key in keys:
        group = _select(runs, by, key)
        if group.empty and not keep_empty:
            continue
        cells = [shown.get(c, {}).get(v, str(v)) for c, v in zip(by, key, strict=True)]
        rows.append([*cells, *(cell(group) for cell in columns.values())])
    return markdown_table([*by, *columns], rows)


def pivot_markdown(
    runs: pd.DataFrame,
    value: str,
    *,
    rows: str,
    columns: str,
    row_order: Sequence[Any],
    column_order: Sequence[Any],
    cell: Callable[[Sequence[float]], str] = mean_std,
    corner: str | None = None,
    labels: Mapping[Any, str] | None = None,
) -> str:
    """``value`` over seeds with ``rows`` down and ``columns`` across (every one shown).

    >>> runs = pd.DataFrame({"method": ["a", "a", "b"], "pattern": ["x", "y", "x"],
    ...                      "final": [0.5, 0.7, 0.4]})
    >>> print(pivot_markdown(runs, "final", rows="method", columns="pattern",
    ...                      row_order=["a", "b"], column_order=["x", "y"]))
    | method | x | y |
    |---|---|---|
    | a | 0.500 | 0.700 |
    | b | 0.400 | — |
    """

    def column(name: Any) -> Callable[[pd.DataFrame], str]:
        return lambda group: cell(group.loc[group[columns] == name, value].tolist())

    table = grouped_markdown(
        runs,
        [rows],
        {str(name): column(name) for name in column_order},
        order=[(r,) for r in row_order],
        labels={rows: dict(labels or {})},
        keep_empty=True,
    )
    return table if corner is None else table.replace(f"| {rows} |", f"| {corner} |", 1)


def paired_differences(
    runs: pd.DataFrame,
    value: str,
    *,
    method: str,
    subject: Any,
    by: Sequence[str] = (),
    pair_on: str = SEED_COLUMN,
) -> pd.DataFrame:
    """``subject`` minus every other method, per configuration of ``by``, paired on seed.

    One row per (``by`` values, ``baseline``, seed) that both methods ran:
    ``difference`` = subject's ``value`` − the baseline's, at that seed.

    >>> runs = pd.DataFrame({"method": ["new", "new", "old", "old"], "seed": [1, 2, 1, 2],
    ...                      "acc": [0.8, 0.6, 0.7, 0.65]})
    >>> paired_differences(runs, "acc", method="method", subject="new")["difference"].round(3)
    0    0.10
    1   -0.05
    Name: difference, dtype: float64
    """
    keys = [*by, pair_on]
    mine = runs[runs[method] == subject].set_index(keys)[value]
    others = runs[runs[method] != subject]
    frames = []
    for baseline, group in others.groupby(method, sort=False):
        theirs = group.set_index(keys)[value]
        common = mine.index.intersection(theirs.index).sort_values()
        frame = (mine.loc[common] - theirs.loc[common]).rename("difference").reset_index()
        frame.insert(len(by), "baseline", baseline)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*by, "baseline", pair_on, "difference"])
    return pd.concat(frames, ignore_index=True)


def differences_of(diffs: pd.DataFrame, baseline: Any, **where: Any) -> np.ndarray:
    """The paired differences against ``baseline`` where each ``by`` column equals ``where``,
    in seed order."""
    mask = diffs["baseline"] == baseline
    for column, wanted in where.items():
        mask &= diffs[column] == wanted
    return diffs.loc[mask, "difference"].to_numpy(dtype=float)


def wins(differences: np.ndarray) -> str:
    """On how many seeds the subject is ahead: ``k/n``.

    >>> wins(np.array([0.1, -0.05, 0.2]))
    '2/3'
    """
    return f"{int((differences > 0).sum())}/{len(differences)}"


# --- the page --------------------------------------------------------------------------------


def machine() -> str:
    """``Linux x86_64, 2 CPU cores (AMD EPYC ...)``: what a page's timings were taken on."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores ({model})"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def provenance(repository: Path | None = None) -> dict[str, str]:
    """What a page records about where it was made: machine, python, torch and flwr
    versions, the git commit of ``repository`` (default: the working directory; ``unknown``
    outside git) and the date."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=repository,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "machine": machine(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "flwr": _version("flwr"),
        "commit": commit or "unknown",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


BEGIN, END = "<!-- make_table.py: begin -->", "<!-- make_table.py: end -->"


def splice(document: str | None, generated: str, *, title: str) -> str:
    """``generated`` between the markers of ``document``, hand-written text around it kept
    (a new page with ``title`` when there is none or it has no markers).

    >>> splice(f"intro {BEGIN} old {END} outro", "new", title="T").replace(BEGIN, "<").replace(
    ...     END, ">")
    'intro <\\nnew\\n> outro'
    """
    block = f"{BEGIN}\n{generated}\n{END}"
    if document is None or BEGIN not in document or END not in document:
        return f"# {title}\n\n{block}\n"
    head, rest = document.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def write_page(path: Path, text: str, *, splice_title: str | None = None) -> None:
    """Write a results page: all of it, or with ``splice_title`` only the part between
    the :data:`BEGIN` and :data:`END` markers of the page already there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if splice_title is not None:
        text = splice(path.read_text() if path.is_file() else None, text, title=splice_title)
    path.write_text(text)


# --- the training side: the only imports of fedsim's internals -------------------------------


def run_scenario_into(scenario_file: Path, overrides: Sequence[str], run_dir: Path) -> float:
    """Run ``scenario_file`` with ``overrides`` into ``run_dir`` (emptied first: an
    interrupted run starts again); returns the wall time. Ray, if the scenario needs it,
    is the caller's (start it once for many runs).

    Uses :func:`fedsim.config.load_scenario` and :func:`fedsim.simulation.run_scenario`.
    """
    import shutil

    from fedsim.config import load_scenario
    from fedsim.simulation import run_scenario

    scenario = load_scenario(scenario_file, list(overrides))
    if run_dir.exists():
        shutil.rmtree(run_dir)
    started = time.perf_counter()
    run_scenario(scenario, run_dir)
    return time.perf_counter() - started


def evaluate_final_model(run_dir: Path, data_dir: Path) -> float:
    """Accuracy of ``run_dir``'s final model on the central test set stored with the run
    ``data_dir`` (its client data store), e.g. another strategy's test set at the same seed.

    Uses :class:`fedsim.data.store.ClientDataStore`, :func:`fedsim.models.build_model`
    and :func:`fedsim.client.training.evaluate_arrays`.
    """
    import torch

    from fedsim.client.training import evaluate_arrays
    from fedsim.data.store import ClientDataStore
    from fedsim.models import build_model

    config = load_run(run_dir).config
    store = ClientDataStore.open(data_dir / CLIENT_DATA_DIR)
    model = build_model(
        config["model"],
        input_shape=store.input_shape,
        num_classes=store.num_classes,
        seed=0,
        source=str(run_dir),
        base_dir=run_dir,
    )
    final_model = run_dir / "final_model.npz"
    if not final_model.is_file():
        raise FedsimError(f"{run_dir}: no final_model.npz")
    with np.load(final_model) as final:
        model.load_state_dict({name: torch.from_numpy(final[name]) for name in final.files})
    x, y = store.central_test()
    _, accuracy = evaluate_arrays(model, x, y, device=torch.device("cpu"), batch_size=1024)
    return float(accuracy)


__all__ = [
    "BEGIN",
    "END",
    "Invocation",
    "Sweep",
    "argument_parser",
    "command",
    "complete_runs",
    "differences_of",
    "evaluate_final_model",
    "grouped_markdown",
    "machine",
    "markdown_table",
    "mean_std",
    "paired_differences",
    "parse_seeds",
    "pivot_markdown",
    "print_event",
    "provenance",
    "run_plans",
    "run_scenario_into",
    "run_scenarios",
    "run_table",
    "splice",
    "wins",
    "write_page",
]
