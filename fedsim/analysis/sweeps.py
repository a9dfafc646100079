"""Many runs, one tidy frame: the runs of a sweep (or any folder of runs) loaded
together, their varying scenario keys found, and the per-configuration results
(final, best, rounds to a target; mean ± std over seeds) that ``fedsim report``
prints."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim import keys
from fedsim.analysis.runs import load_runs
from fedsim.errors import FedsimError
from fedsim.results import (
    METRICS_FILE,
    PARTICIPATION_STATES,
    SCENARIO_FILE,
    SUMMARY_FILE,
    SWEEP_MANIFEST,
)

TABLE_COLUMNS = frozenset(
    {"run", "round", "client", "phase", "metric", "value", *PARTICIPATION_STATES}
)
SEED_COLUMN = "seed"
PHASE_ORDER = (keys.PHASE_CENTRAL, keys.PHASE_EVALUATE, keys.PHASE_TRAIN, keys.PHASE_SERVER)


def find_runs(path: str | Path, *, complete_only: bool = True) -> list[Path]:
    """The runs under ``path``: a run directory itself, or the runs of a sweep directory.

    A sweep's runs come in its ``sweep.json`` order, then any other run under it in name
    order (an older fedsim's ``sweep.json`` listed only its last invocation's runs, so a
    sweep run one seed at a time named only the last seed's); a plain folder of runs in name
    order. Unfinished runs (no ``summary.json``) are left out unless ``complete_only``
    is False.
    """
    path = Path(path)
    if (path / SCENARIO_FILE).is_file():
        return [path]
    if not path.is_dir():
        raise FedsimError(f"{path}: no such run or sweep directory")
    manifest = path / SWEEP_MANIFEST
    candidates = sorted(child for child in path.iterdir() if child.is_dir())
    if manifest.is_file():
        listed = [path / run["name"] for run in json.loads(manifest.read_text())["runs"]]
        known = set(listed)
        candidates = listed + [run for run in candidates if run not in known]
    runs = [
        run
        for run in candidates
        if (run / METRICS_FILE).is_file() and (not complete_only or (run / SUMMARY_FILE).is_file())
    ]
    if not runs:
        raise FedsimError(f"{path}: no {'complete ' if complete_only else ''}runs found")
    return runs


def has_runs(path: str | Path) -> bool:
    """Whether :func:`find_runs` finds complete runs under ``path``."""
    try:
        return bool(find_runs(path))
    except FedsimError:
        return False


def sweep_manifest(path: str | Path) -> dict[str, Any] | None:
    """The ``sweep.json`` of a sweep directory (grid, seeds, runs and their status), or None."""
    manifest = Path(path) / SWEEP_MANIFEST
    return json.loads(manifest.read_text()) if manifest.is_file() else None


def grid_order(keys_: Iterable[str], manifest: Mapping[str, Any] | None) -> list[str]:
    """``keys_`` in the order of the sweep's grid (others after, in their own order).

    >>> grid_order(["b", "seed", "a"], {"grid": {"a": [1, 2], "b": [3, 4]}})
    ['a', 'b', 'seed']
    """
    grid = list((manifest or {}).get("grid", {}))
    keys_ = list(keys_)
    return sorted(keys_, key=lambda k: (grid.index(k) if k in grid else len(grid), keys_.index(k)))


def load_sweep(path: str | Path, table: str = "metrics") -> pd.DataFrame:
    """Every complete run under ``path`` (a sweep or a run directory) as one frame.

    Columns: the table's own, ``run`` (the run's directory name) and one column per
    scenario key (``strategy.name``, ``participation.pattern``, ``seed``, ...).
    """
    return load_runs(find_runs(path), table)


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The scenario-key columns of a frame from :func:`load_runs`, in frame order."""
    return [column for column in frame.columns if column not in TABLE_COLUMNS]


def varying_keys(frame: pd.DataFrame, *, exclude: Iterable[str] = (SEED_COLUMN,)) -> list[str]:
    """The scenario keys whose value differs between the runs of ``frame``.

    >>> frame = pd.DataFrame({"run": ["a", "b"], "seed": [1, 2], "strategy.name": ["x", "y"],
    ...                       "rounds": [5, 5]})
    >>> varying_keys(frame)
    ['strategy.name']
    """
    skip = set(exclude)
    per_run = frame.drop_duplicates("run")
    return [
        column
        for column in config_columns(frame)
        if column not in skip and per_run[column].astype(str).nunique() > 1
    ]


def configuration_label(values: Mapping[str, Any]) -> str:
    """A short legend label: ``key=value`` pairs, plugin paths cut to their file name.

    >>> configuration_label({"strategy.name": "../strategies/ldawa.py:LDAWA", "client.lr": 0.1})
    'strategy.name=ldawa.py:LDAWA, client.lr=0.1'
    """
    parts = []
    for key, value in values.items():
        text = str(value)
        if "/" in text:
            text = text.rsplit("/", 1)[1]
        parts.append(f"{key}={text}")
    return ", ".join(parts)


def higher_is_better(metric: str) -> bool:
    """Whether larger values of ``metric`` are better (losses and errors are not).

    >>> higher_is_better("accuracy"), higher_is_better("eval_loss")
    (True, False)
    """
    name = metric.lower()
    return not ("loss" in name or "error" in name or "distance" in name)


def server_rows(frame: pd.DataFrame, metric: str, phase: str | None = None) -> pd.DataFrame:
    """The run-level rows (client empty) of ``metric``; ``phase`` defaults to the first of
    central, evaluate, train, server that has it."""
    rows = frame[(frame["metric"] == metric) & frame["client"].isna()]
    if phase is None:
        phase = next((p for p in PHASE_ORDER if (rows["phase"] == p).any()), None)
    rows = rows[rows["phase"] == phase] if phase is not None else rows.iloc[0:0]
    if rows.empty:
        found = sorted(set(frame.loc[frame["client"].isna(), "metric"]))
        raise FedsimError(
            f"metric {metric!r} not found{f' in phase {phase!r}' if phase else ''}; "
            f"run-level metrics: {', '.join(found) or 'none'}"
        )
    return rows


def round_times(frame: pd.DataFrame) -> pd.DataFrame:
    """Each (run, round)'s simulated end in seconds (``time_s``), round 0 at 0; empty for
    runs without simulated time (no ``[system]`` table). A single run's metrics (no
    ``run`` column) give ``round`` and ``time_s`` only.

    >>> frame = pd.DataFrame({"run": "a", "round": [1, 2], "client": pd.array([pd.NA] * 2,
    ...     dtype="Int64"), "phase": "system", "metric": "round_end_s", "value": [3.0, 7.5]})
    >>> round_times(frame).values.tolist()
    [['a', 0, 0.0], ['a', 1, 3.0], ['a', 2, 7.5]]
    """
    rows = frame[
        (frame["phase"] == keys.PHASE_SYSTEM)
        & (frame["metric"] == keys.ROUND_END_S)
        & frame["client"].isna()
    ]
    if "run" not in frame:  # one run's metrics (load_run(...).metrics)
        return round_times(frame.assign(run="")).drop(columns="run")
    if rows.empty:
        return pd.DataFrame({"run": [], "round": [], "time_s": []})
    ends = rows[["run", "round", "value"]].rename(columns={"value": "time_s"})
    starts = pd.DataFrame({"run": ends["run"].unique(), "round": 0, "time_s": 0.0})
    both = pd.concat([starts, ends], ignore_index=True)
    return both.sort_values(["run", "round"], kind="stable", ignore_index=True)


def has_simulated_time(frame: pd.DataFrame) -> bool:
    """Whether any run of ``frame`` kept simulated time (a ``[system]`` table)."""
    return bool(((frame["phase"] == keys.PHASE_SYSTEM) & frame["client"].isna()).any())


def curve(
    frame: pd.DataFrame,
    metric: str = keys.METRIC_ACCURACY,
    *,
    by: Iterable[str] | None = None,
    phase: str | None = None,
) -> pd.DataFrame:
    """Mean and spread over seeds of ``metric`` per configuration and round.

    ``by`` defaults to :func:`varying_keys`. Columns: the ``by`` keys, ``round``,
    ``mean``, ``std`` (over seeds, ddof 1; 0 with one seed), ``min``, ``max``, ``runs``,
    and, when the runs kept simulated time, ``time_s``: the mean over seeds of the
    round's simulated end (the metric against simulated time).

    >>> frame = pd.DataFrame({"run": ["a", "a", "b", "b"], "seed": [1, 1, 2, 2],
    ...     "round": [1, 2, 1, 2], "client": pd.array([pd.NA] * 4, dtype="Int64"),
    ...     "phase": "central", "metric": "accuracy", "value": [0.2, 0.4, 0.4, 0.8]})
    >>> curve(frame)[["round", "mean", "min", "max", "runs"]].values.tolist()
    [[1.0, 0.30000000000000004, 0.2, 0.4, 2.0], [2.0, 0.6000000000000001, 0.4, 0.8, 2.0]]
    """
    keys_ = varying_keys(frame) if by is None else list(by)
    rows = server_rows(frame, metric, phase)
    grouped = rows.groupby([*keys_, "round"], dropna=False, sort=False)["value"]
    stats = grouped.agg(["mean", "std", "min", "max", "count"]).reset_index()
    stats = stats.rename(columns={"count": "runs"})
    stats["std"] = stats["std"].fillna(0.0)
    if has_simulated_time(frame):
        timed = rows.merge(round_times(frame), on=["run", "round"], how="left")
        times = timed.groupby([*keys_, "round"], dropna=False, sort=False)["time_s"].mean()
        stats = stats.merge(times.reset_index(), on=[*keys_, "round"], how="left")
    if not keys_:
        return stats.sort_values("round", kind="stable", ignore_index=True)
    order = stats.groupby(keys_, dropna=False, sort=False).ngroup()
    return stats.iloc[np.lexsort((stats["round"].to_numpy(), order.to_numpy()))].reset_index(
        drop=True
    )


def run_results(
    frame: pd.DataFrame,
    metric: str = keys.METRIC_ACCURACY,
    *,
    phase: str | None = None,
    target: float | None = None,
) -> pd.DataFrame:
    """One row per run: its final and best ``metric`` and the rounds it took to reach ``target``.

    Columns: ``run``, the scenario keys, ``final`` (value at the last round), ``best``
    (max, or min for losses), ``best_round`` and ``rounds_to_target`` (first round whose
    value reaches ``target``; NaN when never or when no target is given); when the runs
    kept simulated time, also ``time_to_target_s``: the simulated end of that round;
    when some ran with ``[privacy]``, ``epsilon``: ε after the last round.
    """
    better = higher_is_better(metric)
    rows = server_rows(frame, metric, phase).sort_values("round", kind="stable")
    timed = has_simulated_time(frame)
    times = round_times(frame).set_index(["run", "round"])["time_s"] if timed else None
    records = []
    for run, group in rows.groupby("run", sort=False):
        values = group["value"].to_numpy()
        rounds = group["round"].to_numpy()
        best = int(np.argmax(values) if better else np.argmin(values))
        reached = (
            np.flatnonzero(values >= target if better else values <= target)
            if (target is not None)
            else np.array([], dtype=np.int64)
        )
        record = {
            "run": run,
            "final": float(values[-1]),
            "best": float(values[best]),
            "best_round": int(rounds[best]),
            "rounds_to_target": float(rounds[reached[0]]) if reached.size else np.nan,
        }
        if times is not None:
            key = (run, int(rounds[reached[0]])) if reached.size else None
            record["time_to_target_s"] = float(times.get(key, np.nan)) if key else np.nan
        records.append(record)
    results = pd.DataFrame(records)
    epsilon = final_epsilon(frame)
    if not epsilon.empty:
        results = results.merge(epsilon, on="run", how="left")
    config = frame.drop_duplicates("run")[["run", *config_columns(frame)]]
    return results.merge(config, on="run", how="left")


def final_epsilon(frame: pd.DataFrame) -> pd.DataFrame:
    """Each private run's ε after its last round (columns ``run``, ``epsilon``); empty
    when no run of ``frame`` had a ``[privacy]`` table.

    >>> frame = pd.DataFrame({"run": ["a", "a", "b"], "round": [1, 2, 1],
    ...     "client": pd.array([pd.NA] * 3, dtype="Int64"), "phase": "privacy",
    ...     "metric": "epsilon", "value": [0.5, 0.9, 2.0]})
    >>> final_epsilon(frame).to_dict("list")
    {'run': ['a', 'b'], 'epsilon': [0.9, 2.0]}
    """
    rows = frame[
        (frame["phase"] == keys.PHASE_PRIVACY)
        & (frame["metric"] == keys.DP_EPSILON)
        & frame["client"].isna()
    ]
    if rows.empty:
        return pd.DataFrame(columns=["run", "epsilon"])
    last = rows.sort_values("round", kind="stable").groupby("run", sort=False).tail(1)
    last = last.sort_values("run", kind="stable")
    return last[["run", "value"]].rename(columns={"value": "epsilon"}).reset_index(drop=True)


def summary_table(
    frame: pd.DataFrame,
    metric: str = keys.METRIC_ACCURACY,
    *,
    by: Iterable[str] | None = None,
    phase: str | None = None,
    target: float | None = None,
) -> pd.DataFrame:
    """Mean ± std over seeds of each configuration's final and best ``metric``.

    Columns: the ``by`` keys (default :func:`varying_keys`), ``runs``, ``final_mean``,
    ``final_std``, ``best_mean``, ``best_std``, ``reached`` (runs that reached
    ``target``) and ``rounds_to_target_mean``/``_std`` over those runs, and with
    simulated time ``time_to_target_s_mean``/``_std``, and with ``[privacy]`` runs
    ``epsilon_mean`` (ε after the last round). Standard deviations are over
    seeds with ddof 1 (NaN for a single run).
    """
    keys_ = varying_keys(frame) if by is None else list(by)
    results = run_results(frame, metric, phase=phase, target=target)
    groups = list(results.groupby(keys_, dropna=False, sort=False)) if keys_ else [((), results)]
    rows = []
    for key, group in groups:
        values = dict(zip(keys_, key if isinstance(key, tuple) else (key,), strict=True))
        reached = group["rounds_to_target"].dropna()
        timed = {}
        if "time_to_target_s" in group:
            seconds = group["time_to_target_s"].dropna()
            timed = {
                "time_to_target_s_mean": seconds.mean() if len(seconds) else np.nan,
                "time_to_target_s_std": seconds.std() if len(seconds) else np.nan,
            }
        rows.append(
            {
                **values,
                "runs": len(group),
                "final_mean": group["final"].mean(),
                "final_std": group["final"].std(),
                "best_mean": group["best"].mean(),
                "best_std": group["best"].std(),
                "reached": len(reached),
                "rounds_to_target_mean": reached.mean() if len(reached) else np.nan,
                "rounds_to_target_std": reached.std() if len(reached) else np.nan,
                **timed,
                **({"epsilon_mean": group["epsilon"].mean()} if "epsilon" in group else {}),
            }
        )
    return pd.DataFrame(rows)
