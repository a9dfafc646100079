"""Experiment trackers: optional sinks that receive a run's metrics as it goes.

The parquet tables stay the source of truth; a tracker is a copy for dashboards.
``[log] trackers = ["tensorboard"]`` (or ``fedsim run --log tensorboard``) turns
one on. Each gets, under ``RUN_DIR/logs/``: the resolved scenario as flat
hyperparameters at the start; after every round the server-side metrics of the
round as ``PHASE/METRIC`` and the per-client metrics summarised across clients as
``clients/PHASE/METRIC/{mean,min,max}``, with the round as the step; the final
summary at the end.

- ``jsonl``: ``logs/metrics.jsonl`` (one ``{"step", "metrics"}`` line per round),
  ``logs/params.json`` and ``logs/summary.json``; no dependency.
- ``tensorboard``: TensorBoard event files in ``logs/tensorboard/`` (scalars, and
  the scenario as a text summary). They are written here directly — TFRecord
  framing with CRC32C and the three protobuf messages encoded by hand — because
  the ``tensorboard`` package is heavy and optional; ``tensorboard --logdir
  RUN_DIR/logs`` (``pip install fedsim[tensorboard]``) reads them, and
  :func:`read_tensorboard_scalars` reads the scalars back without it.
- ``mlflow``: a local file store in ``logs/mlruns`` (``pip install fedsim[mlflow]``).
- ``wandb``: offline mode in ``logs/wandb`` (``pip install fedsim[wandb]``).

A tracker that cannot start (its library missing, say) is one warning line; the
run goes on. Report figures are not sent as artifacts yet.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

LOGS_DIR = "logs"


class Tracker(Protocol):
    """What a sink implements; :class:`Trackers` calls it and catches its failures."""

    def start(self, params: Mapping[str, Any]) -> None: ...

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def finish(self, summary: Mapping[str, Any]) -> None: ...


def flat_params(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists as their JSON text).

    >>> flat_params({"seed": 1, "client": {"lr": 0.1}, "model": {"hidden": [32]}})
    {'seed': 1, 'client.lr': 0.1, 'model.hidden': '[32]'}
    """
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_params(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = value
    return flat


def round_metrics(
    rows: Iterable[tuple[int, int | None, str, str, float]],
) -> dict[int, dict[str, float]]:
    """The results rows (round, client, phase, metric, value) as step → tracker metrics.

    >>> metrics = round_metrics([(1, None, "central", "accuracy", 0.5),
    ...     (1, 0, "train", "loss", 1.0), (1, 1, "train", "loss", 3.0)])[1]
    >>> metrics["central/accuracy"], metrics["clients/train/loss/mean"]
    (0.5, 2.0)
    >>> metrics["clients/train/loss/min"], metrics["clients/train/loss/max"]
    (1.0, 3.0)
    """
    server: dict[int, dict[str, float]] = {}
    clients: dict[int, dict[str, list[float]]] = {}
    for rnd, client, phase, metric, value in rows:
        if client is None:
            server.setdefault(rnd, {})[f"{phase}/{metric}"] = float(value)
        else:
            clients.setdefault(rnd, {}).setdefault(f"clients/{phase}/{metric}", []).append(value)
    result: dict[int, dict[str, float]] = {}
    for rnd in sorted({*server, *clients}):
        metrics = dict(server.get(rnd, {}))
        for name, values in clients.get(rnd, {}).items():
            metrics[f"{name}/mean"] = float(sum(values) / len(values))
            metrics[f"{name}/min"] = float(min(values))
            metrics[f"{name}/max"] = float(max(values))
        result[rnd] = metrics
    return result


class Trackers:
    """The run's trackers, fed from the results writer's rows after every round."""

    def __init__(self, names: Sequence[str], run_dir: Path, raw: Mapping[str, Any]) -> None:
        self.active: dict[str, Tracker] = {}
        self._cursor = 0
        logs = Path(run_dir) / LOGS_DIR
        params = flat_params(raw)
        for name in names:
            try:
                tracker = make_tracker(name, logs, str(raw.get("name", Path(run_dir).name)))
                tracker.start(params)
            except Exception as error:  # a tracker never costs the run
                _warn(name, "not started", error)
                continue
            self.active[name] = tracker

    def skip_to(self, rows: int) -> None:
        """Rows before this index were logged already (a resumed run)."""
        self._cursor = rows

    def update(self, rows: Sequence[tuple[int, int | None, str, str, float]]) -> None:
        """Log the rows added since the last call."""
        new = rows[self._cursor :]
        self._cursor = len(rows)
        if not self.active or not new:
            return
        for step, metrics in round_metrics(new).items():
            self._each("log", step, metrics)

    def finish(self, summary: Mapping[str, Any]) -> None:
        self._each("finish", summary)

    def _each(self, method: str, *args: Any) -> None:
        for name, tracker in list(self.active.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as error:
                _warn(name, "stopped", error)
                del self.active[name]


def _warn(name: str, what: str, error: BaseException) -> None:
    hint = f" (pip install fedsim[{name}])" if isinstance(error, ImportError) else ""
    warnings.warn(
        f"tracker {name} {what}: {type(error).__name__}: {error}{hint}", RuntimeWarning, 2
    )


def make_tracker(name: str, logs: Path, run_name: str) -> Tracker:
    """The tracker called ``name`` writing under ``logs``."""
    if name == "jsonl":
        return JsonlTracker(logs)
    if name == "tensorboard":
        return TensorBoardTracker(logs / "tensorboard")
    if name == "mlflow":
        return MlflowTracker(logs / "mlruns", run_name)
    if name == "wandb":
        return WandbTracker(logs, run_name)
    raise ValueError(f"unknown tracker {name!r}")


class JsonlTracker:
    """``metrics.jsonl``, ``params.json`` and ``summary.json`` under ``logs``."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs

    def start(self, params: Mapping[str, Any]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.logs / "params.json").write_text(json.dumps(dict(params), default=str, indent=1))
        self._file = (self.logs / "metrics.jsonl").open("a")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._file.write(json.dumps({"step": step, "metrics": dict(metrics)}) + "\n")
        self._file.flush()

    def finish(self, summary: Mapping[str, Any]) -> None:
        self._file.close()
        (self.logs / "summary.json").write_text(json.dumps(dict(summary), default=str, indent=1))


# --- TensorBoard's event file format, written directly ----------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord framing.

    >>> hex(crc32c(b"123456789"))
    '0xe3069283'
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, *, file_version: str | None = None, values: bytes = b"") -> bytes:
    """An ``Event``: wall_time (1, double), step (2, int64), file_version (3) or summary (5)."""
    event = b"\x09" + struct.pack("<d", time.time()) + b"\x10" + _varint(step)
    if file_version is not None:
        event += _field(3, file_version.encode())
    if values:
        event += _field(5, values)
    return event


def _scalar_value(tag: str, value: float) -> bytes:
    """``Summary.value``: tag (1) and simple_value (2, float)."""
    return _field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))


def _text_value(tag: str, text: str) -> bytes:
    """``Summary.value``: a text summary (a string tensor for the ``text`` plugin)."""
    plugin = _field(1, _field(1, b"text"))  # SummaryMetadata.plugin_data.plugin_name
    tensor = b"\x08\x07" + _field(2, b"") + _field(8, text.encode())  # DT_STRING, shape [], val
    return _field(1, _field(1, tag.encode()) + _field(8, tensor) + _field(9, plugin))


class TensorBoardTracker:
    """Scalars and the scenario text as one TensorBoard event file in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _write(self, event: bytes) -> None:
        header = struct.pack("<Q", len(event))
        record = (
            header
            + struct.pack("<I", _masked_crc(header))
            + event
            + struct.pack("<I", _masked_crc(event))
        )
        self._file.write(record)
        self._file.flush()

    def start(self, params: Mapping[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.fedsim"
        self.path = self.directory / name
        self._file = self.path.open("ab")
        self._write(_event(0, file_version="brain.Event:2"))
        text = "\n".join(f"    {key} = {value!r}" for key, value in params.items())
        self._write(_event(0, values=_text_value("scenario", text)))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        values = b"".join(
            _scalar_value(tag, value) for tag, value in metrics.items() if math.isfinite(value)
        )
        self._write(_event(step, values=values))

    def finish(self, summary: Mapping[str, Any]) -> None:
        rounds = int(summary.get("rounds", 0) or 0)
        final = {
            f"summary/{key}": float(value)
            for key, value in summary.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        self.log(rounds, final)
        self._file.close()


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes) -> Iterable[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message (wire types 0, 1, 2, 5)."""
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, at = _read_varint(data, at)
        elif wire == 1:
            value, at = data[at : at + 8], at + 8
        elif wire == 2:
            length, at = _read_varint(data, at)
            value, at = data[at : at + length], at + length
        elif wire == 5:
            value, at = data[at : at + 4], at + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def read_tensorboard_scalars(path: str | Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in TensorBoard event files (a file or a folder),
    checking each record's CRC32C. Reads the format :class:`TensorBoardTracker` writes
    (and ``torch.utils.tensorboard``'s scalars) without the tensorboard package."""
    path = Path(path)
    files = sorted(path.glob("events.out.tfevents.*")) if path.is_dir() else [path]
    scalars = []
    for file in files:
        data = file.read_bytes()
        at = 0
        while at < len(data):
            header = data[at : at + 8]
            (length,) = struct.unpack("<Q", header)
            (header_crc,) = struct.unpack("<I", data[at + 8 : at + 12])
            event = data[at + 12 : at + 12 + length]
            (event_crc,) = struct.unpack("<I", data[at + 12 + length : at + 16 + length])
            if header_crc != _masked_crc(header) or event_crc != _masked_crc(event):
                raise ValueError(f"{file}: corrupt record at byte {at}")
            at += 16 + length
            step = 0
            for number, _, value in _fields(event):
                if number == 2:
                    step = value
                elif number == 5:
                    for _, _, summary_value in _fields(value):
                        tag, simple = "", None
                        for vnumber, vwire, item in _fields(summary_value):
                            if vnumber == 1:
                                tag = bytes(item).decode()
                            elif vnumber == 2 and vwire == 5:
                                simple = float(struct.unpack("<f", item)[0])
                        if simple is not None:
                            scalars.append((step, tag, simple))
    return scalars


# --- adapters for libraries that are not installed by default ---------------------------


class MlflowTracker:
    """MLflow with a local file store (``logs/mlruns``); needs ``mlflow``."""

    def __init__(self, store: Path, run_name: str) -> None:
        self.store = store
        self.run_name = run_name

    def start(self, params: Mapping[str, Any]) -> None:
        import mlflow  # optional: pip install fedsim[mlflow]

        self.store.mkdir(parents=True, exist_ok=True)
        self._client = mlflow.MlflowClient(tracking_uri=self.store.resolve().as_uri())
        experiment = self._client.get_experiment_by_name("fedsim")
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self._client.create_experiment("fedsim")
        )
        self._run = self._client.create_run(experiment_id, run_name=self.run_name)
        for key, value in params.items():
            self._client.log_param(self._run.info.run_id, key, str(value)[:500])

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self._client.log_metric(self._run.info.run_id, key, value, step=step)

    def finish(self, summary: Mapping[str, Any]) -> None:
        for key, value in summary.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._client.log_metric(self._run.info.run_id, f"summary/{key}", float(value))
        self._client.set_terminated(self._run.info.run_id)


class WandbTracker:
    """Weights & Biases in offline mode (``logs/wandb``; ``wandb sync`` uploads it)."""

    def __init__(self, logs: Path, run_name: str) -> None:
        self.logs = logs
        self.run_name = run_name

    def start(self, params: Mapping[str, Any]) -> None:
        import wandb  # optional: pip install fedsim[wandb]

        self.logs.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            mode="offline", dir=str(self.logs), name=self.run_name, config=dict(params)
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log(dict(metrics), step=step)

    def finish(self, summary: Mapping[str, Any]) -> None:
        self._run.summary.update({f"summary/{k}": v for k, v in summary.items()})
        self._run.finish()
