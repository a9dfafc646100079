"""Load runs into pandas: the analysis API for notebooks and reports.

>>> # run = load_run("runs/quickstart-20261122-101500")
>>> # run.metrics.query("phase == 'central' and metric == 'accuracy'")
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedsim import keys
from fedsim.errors import FedsimError
from fedsim.results import (
    EVENTS_FILE,
    METRICS_FILE,
    PARTICIPATION_FILE,
    SCENARIO_FILE,
    SUMMARY_FILE,
)

if TYPE_CHECKING:
    from fedsim.config import Scenario


@dataclass(frozen=True)
class Run:
    """One run: its resolved scenario and its tables."""

    path: Path
    config: dict[str, Any]
    metrics: pd.DataFrame
    participation: pd.DataFrame
    events: list[dict[str, Any]]
    summary: dict[str, Any] | None

    def central(self, metric: str = "accuracy") -> pd.Series:
        """Centralised test metric per round (index: round)."""
        rows = self.metrics[(self.metrics.phase == "central") & (self.metrics.metric == metric)]
        return rows.set_index("round")["value"]


def load_run(path: str | Path) -> Run:
    """Read a run directory written by ``fedsim run``."""
    path = Path(path)
    scenario_file = path / SCENARIO_FILE
    if not scenario_file.is_file():
        raise FedsimError(f"{path}: not a fedsim run directory (no {SCENARIO_FILE})")
    if not (path / METRICS_FILE).is_file():
        raise FedsimError(f"{path}: run has no {METRICS_FILE} yet (did it start?)")
    summary_file = path / SUMMARY_FILE
    events_file = path / EVENTS_FILE
    return Run(
        path=path,
        config=tomllib.loads(scenario_file.read_text()),
        metrics=pd.read_parquet(path / METRICS_FILE),
        participation=pd.read_parquet(path / PARTICIPATION_FILE),
        events=[json.loads(line) for line in events_file.read_text().splitlines()]
        if events_file.is_file()
        else [],
        summary=json.loads(summary_file.read_text()) if summary_file.is_file() else None,
    )


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists become their repr).

    >>> flatten_config({"seed": 1, "strategy": {"name": "fedau", "cutoff": 50}})
    {'seed': 1, 'strategy.name': 'fedau', 'strategy.cutoff': 50}
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = repr(value)
        else:
            flat[name] = value
    return flat


def load_runs(paths: Iterable[str | Path], table: str = "metrics") -> pd.DataFrame:
    """Several runs' ``metrics`` (or ``participation``) tables, one frame.

    Each row gains a ``run`` column (the directory name) and one column per
    scenario key (dotted, e.g. ``strategy.name``), so a frame can be grouped by
    any configuration choice.
    """
    frames = []
    for path in paths:
        run = load_run(path)
        frame = getattr(run, table).copy()
        frame["run"] = run.path.name
        for key, value in flatten_config(run.config).items():
            frame[key] = value
        frames.append(frame)
    if not frames:
        raise FedsimError("load_runs: no run directories given")
    return pd.concat(frames, ignore_index=True)


PARTICIPATION_STATES = ("available", "selected", "replied", "failed", "dropped", "late")


def participation_matrix(run: Run, state: str = "available") -> pd.DataFrame:
    """A run's participation as a clients × rounds boolean frame.

    Rows are every client 0 … N − 1 (``data.num_clients``), columns every round
    that ran (1 … last); an entry is True where the client was ``state`` in that
    round: ``available`` (reachable), ``selected``, ``replied``, ``failed``,
    ``dropped`` or ``late``. ``participation_matrix(run, "replied").mean(axis=1)``
    is each client's empirical participation rate.
    """
    if state not in PARTICIPATION_STATES:
        raise FedsimError(
            f"participation_matrix: state must be one of {', '.join(PARTICIPATION_STATES)}, "
            f"got {state!r}"
        )
    part = run.participation
    timing = run.metrics.loc[run.metrics.phase == keys.PHASE_TIMING, "round"]
    last_round = int(max([0, *timing.tolist(), *part["round"].tolist()]))
    num_clients = run.config.get("data", {}).get("num_clients")
    if not isinstance(num_clients, int):
        num_clients = int(part["client"].max()) + 1 if len(part) else 0
    rows = part[part[state].astype(bool)]
    matrix = np.zeros((num_clients, last_round), dtype=bool)
    matrix[rows["client"].to_numpy(), rows["round"].to_numpy() - 1] = True
    return pd.DataFrame(
        matrix,
        index=pd.RangeIndex(num_clients, name="client"),
        columns=pd.RangeIndex(1, last_round + 1, name="round"),
    )


def participation_rates(
    matrix: pd.DataFrame | np.ndarray, probabilities: np.ndarray | None = None
) -> pd.DataFrame:
    """Per-client empirical participation of a clients × rounds boolean matrix.

    Columns: ``client``; ``p_n``, the given long-run rate (NaN when none is
    given); ``rate``, the fraction of rounds the client was on; ``rounds``, how
    many; ``longest_gap``, the longest run of consecutive rounds it was off.
    Works on :func:`participation_matrix` and on a pattern's matrix
    (:func:`fedsim.participation.matrix.participation_matrix`).

    >>> on = np.array([[1, 0, 0, 1], [0, 0, 0, 0]], dtype=bool)
    >>> participation_rates(on, np.array([0.5, 0.1]))
       client  p_n  rate  rounds  longest_gap
    0       0  0.5   0.5       2            2
    1       1  0.1   0.0       0            4
    """
    values = np.asarray(matrix, dtype=bool)
    if values.ndim != 2:
        raise ValueError(f"matrix must be clients × rounds, got shape {values.shape}")
    num_clients, num_rounds = values.shape
    if isinstance(matrix, pd.DataFrame):
        clients = np.asarray(matrix.index, dtype=np.int64)
    else:
        clients = np.arange(num_clients, dtype=np.int64)
    p = np.full(num_clients, np.nan)
    if probabilities is not None:
        p = np.asarray(probabilities, dtype=np.float64)
        if p.shape != (num_clients,):
            raise ValueError(f"probabilities must have shape ({num_clients},), got {p.shape}")
    gap = np.zeros(num_clients, dtype=np.int64)
    longest = np.zeros(num_clients, dtype=np.int64)
    for column in range(num_rounds):
        gap = np.where(values[:, column], 0, gap + 1)
        np.maximum(longest, gap, out=longest)
    on = values.sum(axis=1)
    return pd.DataFrame(
        {
            "client": clients,
            "p_n": p,
            "rate": on / num_rounds if num_rounds else np.full(num_clients, np.nan),
            "rounds": on.astype(np.int64),
            "longest_gap": longest,
        }
    )


# --- sweeps: many runs, one tidy frame ------------------------------------------------------

TABLE_COLUMNS = frozenset(
    {"run", "round", "client", "phase", "metric", "value", *PARTICIPATION_STATES}
)
SEED_COLUMN = "seed"
PHASE_ORDER = (keys.PHASE_CENTRAL, keys.PHASE_EVALUATE, keys.PHASE_TRAIN, keys.PHASE_SERVER)
SWEEP_MANIFEST = "sweep.json"  # written by fedsim.sweep
CLIENT_DATA_DIR = "client_data"  # the run's client data store (fedsim.runner.DATA_DIR)


def find_runs(path: str | Path, *, complete_only: bool = True) -> list[Path]:
    """The runs under ``path``: a run directory itself, or the runs of a sweep directory.

    A sweep's runs come in its ``sweep.json`` order; a plain folder of runs in name
    order. Unfinished runs (no ``summary.json``) are left out unless ``complete_only``
    is False.
    """
    path = Path(path)
    if (path / SCENARIO_FILE).is_file():
        return [path]
    if not path.is_dir():
        raise FedsimError(f"{path}: no such run or sweep directory")
    manifest = path / SWEEP_MANIFEST
    if manifest.is_file():
        candidates = [path / run["name"] for run in json.loads(manifest.read_text())["runs"]]
    else:
        candidates = sorted(child for child in path.iterdir() if child.is_dir())
    runs = [
        run
        for run in candidates
        if (run / METRICS_FILE).is_file() and (not complete_only or (run / SUMMARY_FILE).is_file())
    ]
    if not runs:
        raise FedsimError(f"{path}: no {'complete ' if complete_only else ''}runs found")
    return runs


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


def curve(
    frame: pd.DataFrame,
    metric: str = "accuracy",
    *,
    by: Iterable[str] | None = None,
    phase: str | None = None,
) -> pd.DataFrame:
    """Mean and spread over seeds of ``metric`` per configuration and round.

    ``by`` defaults to :func:`varying_keys`. Columns: the ``by`` keys, ``round``,
    ``mean``, ``std`` (over seeds, ddof 1; 0 with one seed), ``min``, ``max``, ``runs``.

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
    if not keys_:
        return stats.sort_values("round", kind="stable", ignore_index=True)
    order = stats.groupby(keys_, dropna=False, sort=False).ngroup()
    return stats.iloc[np.lexsort((stats["round"].to_numpy(), order.to_numpy()))].reset_index(
        drop=True
    )


def run_results(
    frame: pd.DataFrame,
    metric: str = "accuracy",
    *,
    phase: str | None = None,
    target: float | None = None,
) -> pd.DataFrame:
    """One row per run: its final and best ``metric`` and the rounds it took to reach ``target``.

    Columns: ``run``, the scenario keys, ``final`` (value at the last round), ``best``
    (max, or min for losses), ``best_round`` and ``rounds_to_target`` (first round whose
    value reaches ``target``; NaN when never or when no target is given).
    """
    better = higher_is_better(metric)
    rows = server_rows(frame, metric, phase).sort_values("round", kind="stable")
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
        records.append(
            {
                "run": run,
                "final": float(values[-1]),
                "best": float(values[best]),
                "best_round": int(rounds[best]),
                "rounds_to_target": float(rounds[reached[0]]) if reached.size else np.nan,
            }
        )
    results = pd.DataFrame(records)
    config = frame.drop_duplicates("run")[["run", *config_columns(frame)]]
    return results.merge(config, on="run", how="left")


def summary_table(
    frame: pd.DataFrame,
    metric: str = "accuracy",
    *,
    by: Iterable[str] | None = None,
    phase: str | None = None,
    target: float | None = None,
) -> pd.DataFrame:
    """Mean ± std over seeds of each configuration's final and best ``metric``.

    Columns: the ``by`` keys (default :func:`varying_keys`), ``runs``, ``final_mean``,
    ``final_std``, ``best_mean``, ``best_std``, ``reached`` (runs that reached
    ``target``) and ``rounds_to_target_mean``/``_std`` over those runs. Standard
    deviations are over seeds with ddof 1 (NaN for a single run).
    """
    keys_ = varying_keys(frame) if by is None else list(by)
    results = run_results(frame, metric, phase=phase, target=target)
    groups = list(results.groupby(keys_, dropna=False, sort=False)) if keys_ else [((), results)]
    rows = []
    for key, group in groups:
        values = dict(zip(keys_, key if isinstance(key, tuple) else (key,), strict=True))
        reached = group["rounds_to_target"].dropna()
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
            }
        )
    return pd.DataFrame(rows)


def last_client_values(
    frame: pd.DataFrame, metric: str, phase: str = keys.PHASE_SERVER
) -> pd.DataFrame:
    """Each run's last recorded per-client ``metric`` (e.g. FedAU's ω): run, client, value."""
    rows = frame[(frame["metric"] == metric) & (frame["phase"] == phase) & frame["client"].notna()]
    rows = rows.sort_values(["run", "client", "round"], kind="stable")
    last = rows.groupby(["run", "client"], sort=False).tail(1)
    return last[["run", "client", "round", "value"]].reset_index(drop=True)


def scenario_base_dir(run_dir: str | Path) -> Path:
    """The folder a run's relative scenario paths resolve against: the sweep's scenario
    folder for a run of a sweep, else the run directory."""
    run_dir = Path(run_dir)
    manifest = run_dir.parent / SWEEP_MANIFEST
    if manifest.is_file():
        scenario = json.loads(manifest.read_text()).get("scenario")
        if isinstance(scenario, str):
            return Path(scenario).parent
    return run_dir


def participation_probabilities(
    run_dir: str | Path, *, base_dir: str | Path | None = None
) -> np.ndarray | None:
    """The long-run participation rate p_n of each client of a run, or None if its pattern
    has none (traces, scripts).

    Rebuilt from the run's ``scenario.toml`` with :func:`fedsim.participation.build_pattern`
    and the clients' label mix from the run's client data store (recomputed from the
    scenario when the store is gone), exactly as the run drew them.
    """
    from fedsim.config import scenario_from_dict
    from fedsim.participation import build_pattern

    run_dir = Path(run_dir)
    source = run_dir / SCENARIO_FILE
    base = Path(base_dir) if base_dir is not None else scenario_base_dir(run_dir)
    scenario = scenario_from_dict(
        tomllib.loads(source.read_text()), source=str(source), base_dir=base
    )
    labels = _label_mix(run_dir, scenario) if _needs_label_mix(scenario.participation) else None
    pattern = build_pattern(
        scenario.participation,
        num_clients=scenario.data.num_clients,
        seed=scenario.seed,
        label_distribution=labels,
        source=scenario.source,
        base_dir=scenario.base_dir,
    )
    probabilities = getattr(pattern, "probabilities", None)
    return None if probabilities is None else np.asarray(probabilities, dtype=np.float64)


def _label_mix(run_dir: Path, scenario: Scenario) -> np.ndarray | None:
    """Each client's label distribution: from the run's store, else recomputed."""
    store_dir = run_dir / CLIENT_DATA_DIR
    if (store_dir / "meta.json").is_file():
        from fedsim.client_data import ClientDataStore

        counts = ClientDataStore.open(store_dir).label_counts().astype(float)
        totals = counts.sum(axis=1, keepdims=True)
        return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    from fedsim.runner import client_label_distribution

    return client_label_distribution(scenario)


def _needs_label_mix(participation: Mapping[str, Any]) -> bool:
    """Whether the pattern's rates come from the clients' label mix (FedAU's default)."""
    from fedsim.participation import PATTERN_KEYS

    keys_ = PATTERN_KEYS.get(participation.get("pattern", "always"), ())
    return "rates" in keys_ and participation.get("rates", "labels") == "labels"


def omega_vs_probability(run_dir: str | Path) -> pd.DataFrame:
    """FedAU's diagnostic for one run: each client's last ω next to 1/p_n.

    ω_n estimates the mean interval between participations, 1/p_n, so the points
    should lie near the diagonal. Columns: client, omega, round (when ω was last
    updated), p_n, inverse_p.
    """
    run = load_run(run_dir)
    frame = run.metrics.assign(run=run.path.name)
    omega = last_client_values(frame, "omega").rename(columns={"value": "omega"})
    p = participation_probabilities(run.path)
    omega["client"] = omega["client"].astype("int64")
    omega["p_n"] = np.nan if p is None else p[omega["client"].to_numpy()]
    omega["inverse_p"] = 1.0 / omega["p_n"]
    return omega[["client", "omega", "round", "p_n", "inverse_p"]]
