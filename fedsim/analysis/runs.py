"""One run directory read into pandas: its scenario, tables, events, summary and
per-client facts, and the per-run views of participation and FedAU's ω."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim import keys
from fedsim.errors import FedsimError
from fedsim.results import (
    CLIENTS_FILE,
    DEVICES_FILE,
    EVENTS_FILE,
    METRIC_COLUMNS,
    METRICS_FILE,
    PARTICIPATION_COLUMNS,
    PARTICIPATION_FILE,
    PARTICIPATION_STATES,
    SCENARIO_FILE,
    SUMMARY_FILE,
    ClientFacts,
)


@dataclass(frozen=True)
class Run:
    """One run: its resolved scenario and its tables."""

    path: Path
    config: dict[str, Any]
    metrics: pd.DataFrame
    participation: pd.DataFrame
    events: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @property
    def devices(self) -> pd.DataFrame | None:
        """Each client's device and network (``devices.parquet``); None without ``[system]``."""
        path = self.path / DEVICES_FILE
        return pd.read_parquet(path) if path.is_file() else None

    def central(self, metric: str = keys.METRIC_ACCURACY) -> pd.Series:
        """Centralised test metric per round (index: round)."""
        rows = self.metrics[
            (self.metrics.phase == keys.PHASE_CENTRAL) & (self.metrics.metric == metric)
        ]
        return rows.set_index("round")["value"]


def load_run(path: str | Path) -> Run:
    """Read a run directory written by ``fedsim run``.

    Every file is read as data (TOML, parquet, JSON); one that is not what its name
    says is a one-line :class:`FedsimError` naming it.
    """
    path = Path(path)
    scenario_file = path / SCENARIO_FILE
    if not scenario_file.is_file():
        raise FedsimError(f"{path}: not a fedsim run directory (no {SCENARIO_FILE})")
    if not (path / METRICS_FILE).is_file():
        raise FedsimError(f"{path}: run has no {METRICS_FILE} yet (did it start?)")
    summary_file = path / SUMMARY_FILE
    events_file = path / EVENTS_FILE
    summary = _read(summary_file, _json_object) if summary_file.is_file() else None
    events = _read(events_file, _json_lines) if events_file.is_file() else []
    return Run(
        path=path,
        config=_read(scenario_file, lambda f: tomllib.loads(f.read_text())),
        metrics=_read(path / METRICS_FILE, lambda f: _table(f, METRIC_COLUMNS)),
        participation=_read(path / PARTICIPATION_FILE, lambda f: _table(f, PARTICIPATION_COLUMNS)),
        events=events,
        summary=summary,
    )


def _read(file: Path, reader: Callable[[Path], Any]) -> Any:
    try:
        return reader(file)
    except FedsimError:
        raise
    except Exception as error:  # the parsers raise many kinds for a bad file
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise FedsimError(
            f"{file}: not a valid {file.suffix[1:]} file of a run ({reason})"
        ) from None


def _table(file: Path, columns: list[str]) -> pd.DataFrame:
    frame = pd.read_parquet(file)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FedsimError(f"{file}: not a table of a run (no column {', '.join(missing)})")
    return frame


def _json_object(file: Path) -> dict[str, Any]:
    value = json.loads(file.read_text())
    if not isinstance(value, dict):
        raise FedsimError(f"{file}: not a summary of a run (a JSON object)")
    return value


def _json_lines(file: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    if not all(isinstance(event, dict) for event in events):
        raise FedsimError(f"{file}: not the events of a run (one JSON object a line)")
    return events


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


def last_client_values(
    frame: pd.DataFrame, metric: str, phase: str = keys.PHASE_SERVER
) -> pd.DataFrame:
    """Each run's last recorded per-client ``metric`` (e.g. FedAU's ω): run, client, value."""
    rows = frame[(frame["metric"] == metric) & (frame["phase"] == phase) & frame["client"].notna()]
    rows = rows.sort_values(["run", "client", "round"], kind="stable")
    last = rows.groupby(["run", "client"], sort=False).tail(1)
    return last[["run", "client", "round", "value"]].reset_index(drop=True)


def client_facts(run_dir: str | Path) -> ClientFacts:
    """The per-client facts a run recorded (``clients.parquet``): example counts, label
    mix and long-run participation rates p_n, each None where the run did not know it."""
    path = Path(run_dir) / CLIENTS_FILE
    if not path.is_file():
        raise FedsimError(
            f"{run_dir}: no {CLIENTS_FILE} (a run made before fedsim 0.2 wrote none; "
            "run it again for the per-client facts)"
        )
    return ClientFacts.from_frame(pd.read_parquet(path))


def participation_probabilities(run_dir: str | Path) -> np.ndarray | None:
    """The long-run participation rate p_n of each client of a run, or None if its pattern
    has none (traces, scripts), exactly as the run drew them (from ``clients.parquet``)."""
    return client_facts(run_dir).participation_probability


def omega_vs_probability(run_dir: str | Path) -> pd.DataFrame:
    """FedAU's diagnostic for one run: each client's last ω next to 1/p_n.

    ω_n estimates the mean interval between participations, 1/p_n, so the points
    should lie near the diagonal. Columns: client, omega, round (when ω was last
    updated), p_n, inverse_p.
    """
    run = load_run(run_dir)
    frame = run.metrics.assign(run=run.path.name)
    omega = last_client_values(frame, keys.OMEGA).rename(columns={"value": "omega"})
    p = participation_probabilities(run.path)
    omega["client"] = omega["client"].astype("int64")
    omega["p_n"] = np.nan if p is None else p[omega["client"].to_numpy()]
    omega["inverse_p"] = 1.0 / omega["p_n"]
    return omega[["client", "omega", "round", "p_n", "inverse_p"]]
