"""A run's results directory: long-format tables written atomically.

Layout of ``RUN_DIR``:

- ``scenario.toml`` — the resolved scenario (after ``--set`` overrides);
- ``metrics.parquet`` — one row per (round, client, phase, metric, value);
  ``client`` is empty (<NA>) for server-side rows;
- ``participation.parquet`` — one row per (round, client) for every client
  that was reachable: available, selected, replied, failed, dropped, late;
- ``events.jsonl`` — failures and other notable events, one JSON object a line;
- ``final_model.npz`` — the final global model (name → array);
- ``checkpoint.zip`` — while the run is unfinished: the state to resume from, as
  JSON, ``.npy`` and Flower protobuf members (:mod:`fedsim.checkpoint`); removed once
  the run completes;
- ``summary.json`` — written last: rounds done, final metrics, wall time.

Every file is written to a temporary name and renamed into place, so a run
killed at any moment leaves either the previous complete file or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import tomli_w

from fedsim import keys
from fedsim.engine.reachable import RoundLog

METRICS_FILE = "metrics.parquet"
PARTICIPATION_FILE = "participation.parquet"
SCENARIO_FILE = "scenario.toml"
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"
FINAL_MODEL_FILE = "final_model.npz"

METRIC_COLUMNS = ["round", "client", "phase", "metric", "value"]
PARTICIPATION_COLUMNS = [
    "round",
    "client",
    "available",
    "selected",
    "replied",
    "failed",
    "dropped",
    "late",
]


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
            self.event(rnd, "client_failed", client=client, reason=reason)

    def event(self, rnd: int, kind: str, **fields: Any) -> None:
        self.events.append({"round": rnd, "event": kind, **fields})

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

    def finish(self, summary: dict[str, Any]) -> None:
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


CENTRAL_ACCURACY = (keys.PHASE_CENTRAL, "accuracy")
