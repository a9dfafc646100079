"""Experiment trackers: optional sinks that receive a run's metrics as it goes.

The parquet tables stay the source of truth; a tracker is a copy for dashboards.
``[log] trackers = ["tensorboard"]`` (or ``fedsim run --log tensorboard``) turns
one on. Each gets, under ``RUN_DIR/logs/``: the resolved scenario as flat
hyperparameters at the start; after every round the server-side metrics of the
round as ``PHASE/METRIC`` and the per-client metrics summarised across clients as
``clients/PHASE/METRIC/{mean,min,max}``, with the round as the step; at the end
the report's figures (the run writes ``RUN_DIR/report``, as ``fedsim report
RUN_DIR`` would, when a tracker that takes images is on) and the final summary.

- ``jsonl``: ``logs/metrics.jsonl`` (one ``{"step", "metrics"}`` line per round),
  ``logs/params.json`` and ``logs/summary.json``; no dependency, no figures.
- ``tensorboard``: TensorBoard event files in ``logs/tensorboard/`` (scalars, the
  scenario as a text summary, the figures as images). They are written here
  directly — TFRecord framing with CRC32C and the protobuf messages encoded by
  hand — because the ``tensorboard`` package is heavy and optional; ``tensorboard
  --logdir RUN_DIR/logs`` (``pip install fedsim[tensorboard]``) reads them, and
  :func:`read_tensorboard_scalars` reads the scalars back without it.
- ``mlflow``: an MLflow run (``pip install fedsim[mlflow]``) in a local SQLite
  store, ``logs/mlflow.db``, with the report as artifacts in ``logs/mlartifacts``
  (MLflow 3 keeps its plain-file store in maintenance mode behind an opt-in, and
  names SQLite the local default); ``MLFLOW_TRACKING_URI`` (a shared store for a
  sweep, or a server) and ``MLFLOW_EXPERIMENT_NAME`` (default ``fedsim``) when set.
- ``wandb``: a W&B run in offline mode in ``logs/wandb`` (``pip install
  fedsim[wandb]``; ``wandb sync`` uploads it later), the figures as images in its
  history; ``WANDB_MODE`` and ``WANDB_PROJECT`` (default ``fedsim``) when set.

A tracker that cannot start (its library missing, say) is one warning line; the
run goes on. A run that stops early ends its tracker runs as failed (an error) or
killed (interrupted; ``fedsim resume`` continues in a new tracker run).
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

LOGS_DIR = "logs"


class Tracker(Protocol):
    """What a sink implements; :class:`Trackers` calls it and catches its failures.

    ``figures`` gets the report's PNG files by name and the report directory, once,
    before ``finish``, and only from a tracker whose ``takes_figures`` is true.
    """

    takes_figures: bool

    def start(self, params: Mapping[str, Any]) -> None: ...

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def figures(self, step: int, figures: Mapping[str, Path], report: Path) -> None: ...

    def finish(self, summary: Mapping[str, Any]) -> None: ...

    def stop(self, status: str) -> None:
        """End early: ``FAILED`` (the run raised) or ``KILLED`` (interrupted)."""


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
        self.run_dir = Path(run_dir)
        logs = self.run_dir / LOGS_DIR
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
        """Send the report's figures to the trackers that take them, then the summary.

        The run's files are complete here: the report is the one ``fedsim report
        RUN_DIR`` writes, in the same place. A report that fails is one warning.
        """
        step = int(summary.get("rounds", 0) or 0)
        if any(tracker.takes_figures for tracker in self.active.values()):
            try:
                from fedsim.analysis.report import write_report

                report = write_report(self.run_dir)
            except Exception as error:
                warnings.warn(
                    f"trackers: the report's figures not sent: {type(error).__name__}: {error}",
                    RuntimeWarning,
                    2,
                )
            else:
                for name, tracker in list(self.active.items()):
                    if tracker.takes_figures:
                        self._call(name, tracker, "figures", step, report.figures, report.directory)
        self._each("finish", summary)

    def stop(self, status: str) -> None:
        """End the trackers' runs of a run that stopped early (``FAILED``, ``KILLED``)."""
        self._each("stop", status)
        self.active.clear()

    def _each(self, method: str, *args: Any) -> None:
        for name, tracker in list(self.active.items()):
            self._call(name, tracker, method, *args)

    def _call(self, name: str, tracker: Tracker, method: str, *args: Any) -> None:
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
        return MlflowTracker(logs, run_name)
    if name == "wandb":
        return WandbTracker(logs, run_name)
    raise ValueError(f"unknown tracker {name!r}")


class JsonlTracker:
    """``metrics.jsonl``, ``params.json`` and ``summary.json`` under ``logs``."""

    takes_figures = False

    def __init__(self, logs: Path) -> None:
        self.logs = logs

    def start(self, params: Mapping[str, Any]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.logs / "params.json").write_text(json.dumps(dict(params), default=str, indent=1))
        self._file = (self.logs / "metrics.jsonl").open("a")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._file.write(json.dumps({"step": step, "metrics": dict(metrics)}) + "\n")
        self._file.flush()

    def figures(self, step: int, figures: Mapping[str, Path], report: Path) -> None:
        pass

    def stop(self, status: str) -> None:
        self._file.close()

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


def _image_value(tag: str, png: bytes) -> bytes:
    """``Summary.value``: an image (``Summary.Image``: height, width, colorspace, PNG)."""
    width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR chunk
    colorspace = {0: 1, 2: 3, 4: 2, 6: 4}.get(png[25], 4)  # PNG colour type → channels
    image = (
        b"\x08"
        + _varint(height)
        + b"\x10"
        + _varint(width)
        + b"\x18"
        + _varint(colorspace)
        + _field(4, png)
    )
    return _field(1, _field(1, tag.encode()) + _field(4, image))


class TensorBoardTracker:
    """Scalars, the scenario text and the report's figures as one TensorBoard event file
    in ``directory``."""

    takes_figures = True

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

    def figures(self, step: int, figures: Mapping[str, Path], report: Path) -> None:
        for name, path in figures.items():
            self._write(_event(step, values=_image_value(f"report/{name}", path.read_bytes())))

    def finish(self, summary: Mapping[str, Any]) -> None:
        rounds = int(summary.get("rounds", 0) or 0)
        final = {
            f"summary/{key}": float(value)
            for key, value in summary.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        self.log(rounds, final)
        self._file.close()

    def stop(self, status: str) -> None:
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
    """An MLflow run: in ``logs/mlflow.db`` (SQLite) with artifacts in
    ``logs/mlartifacts``, or in ``MLFLOW_TRACKING_URI`` when set; needs ``mlflow``."""

    takes_figures = True

    def __init__(self, logs: Path, run_name: str) -> None:
        self.logs = logs
        self.run_name = run_name

    def start(self, params: Mapping[str, Any]) -> None:
        import mlflow  # optional: pip install fedsim[mlflow]
        from mlflow.entities import Param

        uri, artifacts = os.environ.get("MLFLOW_TRACKING_URI"), None
        if not uri:
            self.logs.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(self.logs / 'mlflow.db').resolve()}"
            artifacts = (self.logs / "mlartifacts").resolve().as_uri()
        self._client = mlflow.MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "fedsim"
        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self._client.create_experiment(name, artifacts)
            except Exception:  # another run of a sweep created it in the meantime
                experiment = self._client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment is not None:
            experiment_id = experiment.experiment_id
        self._run_id = self._client.create_run(experiment_id, run_name=self.run_name).info.run_id
        items = [Param(key, str(value)[:500]) for key, value in params.items()]
        for at in range(0, len(items), 100):  # MLflow takes 100 parameters a batch
            self._client.log_batch(self._run_id, params=items[at : at + 100])

    def _metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        for at in range(0, len(items), 1000):  # and 1000 metrics
            self._client.log_batch(self._run_id, metrics=items[at : at + 1000])

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._metrics(step, metrics)

    def figures(self, step: int, figures: Mapping[str, Path], report: Path) -> None:
        self._client.log_artifacts(self._run_id, str(report), "report")

    def finish(self, summary: Mapping[str, Any]) -> None:
        final = {
            f"summary/{key}": float(value)
            for key, value in summary.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        self._metrics(int(summary.get("rounds", 0) or 0), final)
        self._client.set_terminated(self._run_id)

    def stop(self, status: str) -> None:
        self._client.set_terminated(self._run_id, status)


class WandbTracker:
    """A Weights & Biases run, offline in ``logs/wandb`` unless ``WANDB_MODE`` says
    otherwise (``wandb sync`` uploads it); needs ``wandb``."""

    takes_figures = True

    def __init__(self, logs: Path, run_name: str) -> None:
        self.logs = logs
        self.run_name = run_name

    def start(self, params: Mapping[str, Any]) -> None:
        import wandb  # optional: pip install fedsim[wandb]

        self.logs.mkdir(parents=True, exist_ok=True)
        mode: Any = os.environ.get("WANDB_MODE") or "offline"
        self._run = wandb.init(
            mode=mode,
            project=os.environ.get("WANDB_PROJECT") or "fedsim",
            dir=str(self.logs),
            name=self.run_name,
            config=dict(params),
            reinit="create_new",  # never the script's own run, nor a previous one
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log(dict(metrics), step=step)

    def figures(self, step: int, figures: Mapping[str, Path], report: Path) -> None:
        import wandb

        images = {f"report/{name}": wandb.Image(str(path)) for name, path in figures.items()}
        self._run.log(images, step=step)

    def finish(self, summary: Mapping[str, Any]) -> None:
        self._run.summary.update({f"summary/{k}": v for k, v in summary.items()})
        self._run.finish()

    def stop(self, status: str) -> None:
        self._run.finish(exit_code=1)
