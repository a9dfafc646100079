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
from typing import Any

import pandas as pd

from fedsim.errors import FedsimError
from fedsim.results import (
    EVENTS_FILE,
    METRICS_FILE,
    PARTICIPATION_FILE,
    SCENARIO_FILE,
    SUMMARY_FILE,
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
