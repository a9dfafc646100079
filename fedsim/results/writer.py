"""Every write to a run directory: long-format tables kept in memory and flushed
atomically, the per-client facts, the final model and, last, the summary.

The files and their columns are named in :mod:`fedsim.results.schema`. Every file
is written to a temporary name and renamed into place, so a run killed at any
moment leaves either the previous complete file or the new one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomli_w

from fedsim import keys
from fedsim.results.clients import ClientFacts
from fedsim.results.schema import (
    CLIENTS_FILE,
    DEVICES_FILE,
    EVENT_CLIENT_FAILED,
    EVENT_RUN_STOPPED,
    EVENTS_FILE,
    FINAL_MODEL_FILE,
    METRIC_COLUMNS,
    METRICS_FILE,
    PARTICIPATION_COLUMNS,
    PARTICIPATION_FILE,
    SCENARIO_FILE,
    SUMMARY_FILE,
)


@dataclass
class RoundLog:
    """What happened to every client in one round (client ids, not node ids): the
    engine fills it in, :meth:`RunWriter.participation` turns it into rows."""

    available: np.ndarray
    selected: set[int] = field(default_factory=set)
    replied: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)
    dropped: set[int] = field(default_factory=set)
    late: dict[int, float] = field(default_factory=dict)
    # Simulated time (a [system] table only): the round's (start, end) in seconds and
    # each client's (download, compute, upload, latency) seconds.
    span: tuple[float, float] | None = None
    times: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunWriter:
    """Accumulates a run's rows in memory and flushes them atomically."""

    def __init__(self, run_dir: Path, scenario_raw: dict[str, Any]) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / SCENARIO_FILE, tomli_w.dumps(scenario_raw).encode())
        self.metric_rows: list[tuple[int, int | None, str, str, float]] = []
        self.participation_rows: list[tuple[int, int, bool, bool, bool, bool, bool, bool]] = []
        self.events: list[dict[str, Any]] = []

    def metric(self, rnd: int, client: int | None, phase: str, name: str, value: float) -> None:
        self.metric_rows.append((rnd, client, phase, name, float(value)))

    def metrics(
        self, rnd: int, client: int | None, phase: str, values: Iterable[tuple[str, Any]]
    ) -> None:
        for name, value in values:
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue  # list-valued metrics are not part of the long table
            self.metric(rnd, client, phase, name, value)

    def participation(self, rnd: int, log: RoundLog) -> None:
        for client in log.available.tolist():
            self.participation_rows.append(
                (
                    rnd,
                    client,
                    True,
                    client in log.selected,
                    client in log.replied,
                    client in log.failed,
                    client in log.dropped,
                    client in log.late,
                )
            )
        for client, reason in sorted(log.failed.items()):
            self.event(rnd, EVENT_CLIENT_FAILED, client=client, reason=reason)

    def simulated_time(self, rnd: int, log: RoundLog) -> None:
        """The round's simulated start and end (server rows) and each client's seconds
        (phase ``system``); nothing without simulated time."""
        if log.span is None:
            return
        start, end = log.span
        self.metrics(
            rnd, None, keys.PHASE_SYSTEM, [(keys.ROUND_START_S, start), (keys.ROUND_END_S, end)]
        )
        for client, parts in sorted(log.times.items()):
            rows = list(zip(keys.CLIENT_TIME_METRICS, parts, strict=True))
            self.metrics(rnd, client, keys.PHASE_SYSTEM, [*rows, (keys.ARRIVAL_S, sum(parts))])

    def event(self, rnd: int, kind: str, **fields: Any) -> None:
        self.events.append({"round": rnd, "event": kind, **fields})

    def stopped(self, error: BaseException) -> None:
        """A run ended by ``error``: the reason as a ``run_stopped`` event after the last
        round with rows, and the results so far flushed."""
        reason = f"{type(error).__name__}: {error}"
        self.event(self.last_round(), EVENT_RUN_STOPPED, reason=reason)
        self.flush()

    def metrics_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.metric_rows, columns=METRIC_COLUMNS)
        frame["round"] = frame["round"].astype("int64")
        frame["client"] = frame["client"].astype("Int64")
        frame["value"] = frame["value"].astype("float64")
        return frame

    def participation_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.participation_rows, columns=PARTICIPATION_COLUMNS)
        return frame.astype({"round": "int64", "client": "int64"})

    def flush(self) -> None:
        atomic_write_parquet(self.run_dir / METRICS_FILE, self.metrics_frame())
        atomic_write_parquet(self.run_dir / PARTICIPATION_FILE, self.participation_frame())
        text = "".join(json.dumps(e, default=str) + "\n" for e in self.events)
        atomic_write_bytes(self.run_dir / EVENTS_FILE, text.encode())

    def client_facts(self, facts: ClientFacts) -> None:
        """Write ``clients.parquet`` (once, when the run's data is set up)."""
        atomic_write_parquet(self.run_dir / CLIENTS_FILE, facts.to_frame())

    def devices(self, frame: pd.DataFrame) -> None:
        """Write ``devices.parquet`` (once, with a ``[system]`` table): each client's device."""
        atomic_write_parquet(self.run_dir / DEVICES_FILE, frame)

    def final_model(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Write ``final_model.npz`` (name → array, in order)."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        atomic_write_bytes(self.run_dir / FINAL_MODEL_FILE, buffer.getvalue())

    def finish(self, summary: dict[str, Any]) -> None:
        """Flush the tables and write the summary: the run is complete from here on."""
        self.flush()
        atomic_write_bytes(
            self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str).encode()
        )

    def snapshot(self) -> dict[str, list[Any]]:
        """Every row so far, for a checkpoint (:meth:`restore` puts them back)."""
        return {
            "metrics": list(self.metric_rows),
            "participation": list(self.participation_rows),
            "events": [dict(e) for e in self.events],
        }

    def restore(self, snapshot: dict[str, list[Any]]) -> None:
        """Replace the rows with a checkpoint's (rows of later rounds are dropped)."""
        self.metric_rows = list(snapshot["metrics"])
        self.participation_rows = list(snapshot["participation"])
        self.events = [dict(e) for e in snapshot["events"]]

    def last_round(self) -> int:
        """The latest round with any row (0 before the first round ends)."""
        rounds = [row[0] for row in self.metric_rows[-1:] + self.participation_rows[-1:]]
        return max(rounds, default=0)

    def latest(self, phase: str, metric: str) -> float | None:
        """The most recent server-side value of ``metric`` in ``phase``."""
        for _, client, row_phase, name, value in reversed(self.metric_rows):
            if client is None and row_phase == phase and name == metric:
                return value
        return None
