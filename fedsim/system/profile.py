"""The ``[system]`` table: every client's device and network, and what a client-round costs.

Each quantity is a number (every client the same), a distribution drawn once per
client, or a column of a per-client CSV (``file``):

- ``compute``: examples per second (or, with ``reference_speed``, a multiplier of
  a reference device's examples per second);
- ``download``, ``upload``: bandwidth in Mbit/s (10⁶ bits per second);
- ``latency``: seconds added to every client-round (the round trip).

A quantity left out costs nothing (infinitely fast, or no latency), unless
``file`` is set: then it must be a column of the CSV. Distributions
(``constant``: ``value``; ``uniform``: ``low``, ``high``; ``lognormal``:
``median``, ``sigma``) draw from the stream ``(seed, "system.<quantity>")``,
whose n-th value is client n's: a client keeps its device for the whole run,
whatever the number of clients, actors or engine, and across a resume.
``jitter`` σ multiplies a client-round's download, compute and upload times by
exp(σ·Z), Z standard normal from ``(seed, "system.jitter", round)`` (three
values per client, client n's at 3n…3n+2).

With ``[system]``, ``participation.deadline`` is a duration in simulated time and
needs units (``"90 s"``, ``"2 min"``, ``"1.5 h"``); ``participation.latency``
(abstract units) is refused. ``keep_first = k`` is over-selection: the round
closes at its k-th reply (ask more clients than k through the pattern or the
strategy, as production federations do).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim.options import Options, read_duration
from fedsim.seeding import rng
from fedsim.system.clock import ClientTime, transfer_seconds

QUANTITIES = ("compute", "download", "upload", "latency")
SYSTEM_KEYS = (*QUANTITIES, "reference_speed", "file", "jitter", "keep_first", "idle_round")
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "uniform": ("low", "high"),
    "lognormal": ("median", "sigma"),
}
JITTER_PURPOSE = "system.jitter"


@dataclass(frozen=True)
class DeviceProfiles:
    """Per-client arrays (N,): examples/s, Mbit/s down and up, seconds of latency."""

    speed: np.ndarray
    download: np.ndarray
    upload: np.ndarray
    latency: np.ndarray

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "client": np.arange(len(self.speed)),
                "compute": self.speed,
                "download": self.download,
                "upload": self.upload,
                "latency": self.latency,
            }
        )


@dataclass(frozen=True)
class Work:
    """What a client-round processes, from the scenario's ``[client]`` table: ``local_epochs``
    · m_n examples, or ``local_steps`` · min(batch_size, m_n)."""

    local_steps: int | None
    local_epochs: int | None
    batch_size: int
    train_examples: np.ndarray | None  # m_n; None: from the reply's num-examples

    def examples(self, client: int, replied_examples: int | None) -> int:
        """Examples client ``client`` processed in a round.

        >>> Work(None, 2, 32, np.array([100, 50])).examples(1, None)
        100
        >>> Work(5, None, 32, np.array([100, 20])).examples(1, None)
        100
        """
        m = (
            int(self.train_examples[client])
            if self.train_examples is not None
            else int(replied_examples or 0)
        )
        if self.local_steps is not None:
            return self.local_steps * min(self.batch_size, m)
        return (self.local_epochs or 1) * m


class SystemModel:
    """Every client's device and network, the deadline and over-selection of a run.

    >>> model = SystemModel(
    ...     DeviceProfiles(speed=np.array([10.0, 5.0]), download=np.array([8.0, 8.0]),
    ...                    upload=np.array([4.0, 1.0]), latency=np.array([0.5, 0.5])),
    ...     work=Work(None, 1, 32, np.array([100, 100])), seed=0)
    >>> t = model.client_time(1, 1, down_bytes=2_000_000, up_bytes=1_000_000, replied_examples=None)
    >>> t, t.total
    (ClientTime(download=2.0, compute=20.0, upload=8.0, latency=0.5), 30.5)
    """

    def __init__(
        self,
        profiles: DeviceProfiles,
        *,
        work: Work,
        seed: int,
        jitter: float = 0.0,
        deadline: float | None = None,
        keep_first: int | None = None,
        idle_round: float | None = None,
    ) -> None:
        self.profiles = profiles
        self.work = work
        self.seed = seed
        self.jitter = jitter
        self.deadline = deadline
        self.keep_first = keep_first
        # How long a round in which nobody is asked lasts: the deadline, else 0 by default.
        self.idle_round = idle_round if idle_round is not None else (deadline or 0.0)
        self._jitter_round = 0
        self._factors = np.ones((len(profiles.speed), 3))

    @property
    def num_clients(self) -> int:
        return len(self.profiles.speed)

    def factors(self, round: int) -> np.ndarray:
        """The round's jitter factors, (N, 3): download, compute, upload."""
        if self.jitter and round != self._jitter_round:
            z = rng(self.seed, JITTER_PURPOSE, round).standard_normal((self.num_clients, 3))
            self._factors = np.exp(self.jitter * z)
            self._jitter_round = round
        return self._factors

    def client_time(
        self,
        round: int,
        client: int,
        *,
        down_bytes: int,
        up_bytes: int,
        replied_examples: int | None,
    ) -> ClientTime:
        """Client ``client``'s simulated seconds in ``round`` for these message sizes."""
        p = self.profiles
        f = self.factors(round)[client]
        examples = self.work.examples(client, replied_examples)
        speed = float(p.speed[client])
        return ClientTime(
            download=transfer_seconds(down_bytes, float(p.download[client])) * float(f[0]),
            compute=(0.0 if math.isinf(speed) else examples / speed) * float(f[1]),
            upload=transfer_seconds(up_bytes, float(p.upload[client])) * float(f[2]),
            latency=float(p.latency[client]),
        )


def build_system(
    table: Mapping[str, Any] | None,
    participation: Mapping[str, Any],
    *,
    num_clients: int,
    seed: int,
    source: str | Path,
    base_dir: Path,
    work: Work,
) -> SystemModel | None:
    """The scenario's system model; None without a ``[system]`` table."""
    if table is None:
        return None
    options = Options(table, source=source, prefix="system", base_dir=base_dir)
    options.only(SYSTEM_KEYS)
    csv = _read_csv(options, num_clients) if options.has("file") else None
    lowest = {"compute": 0.0, "download": 0.0, "upload": 0.0, "latency": 0.0}
    values: dict[str, np.ndarray] = {}
    for name in QUANTITIES:
        strict = name != "latency"
        if options.has(name):
            if csv is not None and name in csv.columns:
                raise options.fail(name, f"either this key or the column {name} of system.file")
            values[name] = _quantity(options, name, num_clients, seed, strict)
        elif csv is not None:
            if name not in csv.columns:
                raise options.fail(
                    "file",
                    f"a column {name!r} in {csv.attrs['path']} (system.{name} is not set)",
                    list(csv.columns),
                )
            column = csv[name].to_numpy()
            bad = ~np.isfinite(column) | (column <= lowest[name] if strict else column < 0)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise options.fail(
                    "file",
                    f"{'positive' if strict else 'non-negative'} numbers in column {name!r} "
                    f"of {csv.attrs['path']}",
                    f"{column[row]} for client {row}",
                )
            values[name] = column.astype(np.float64)
        else:
            values[name] = np.full(num_clients, 0.0 if name == "latency" else math.inf)
    speed = values["compute"]
    if options.has("reference_speed"):
        speed = speed * options.number("reference_speed", None, minimum=0, open_minimum=True)
    jitter = options.number("jitter", 0.0, minimum=0.0, finite=True)
    keep_first = options.optional_integer("keep_first", minimum=1)
    if keep_first is not None and keep_first > num_clients:
        raise options.fail("keep_first", f"an integer in [1, {num_clients}]", keep_first)
    deadline = None
    if "deadline" in participation:
        part = Options(participation, source=source, prefix="participation")
        deadline = read_duration(part, "deadline")
    if "latency" in participation:
        raise Options(participation, source=source, prefix="participation").fail(
            "latency", "no latency table with [system] (use system.latency, in seconds)"
        )
    return SystemModel(
        DeviceProfiles(
            speed=speed,
            download=values["download"],
            upload=values["upload"],
            latency=values["latency"],
        ),
        work=work,
        seed=seed,
        jitter=jitter,
        deadline=deadline,
        keep_first=keep_first,
        idle_round=read_duration(options, "idle_round") if options.has("idle_round") else None,
    )


def _quantity(options: Options, name: str, num_clients: int, seed: int, strict: bool) -> np.ndarray:
    """A number, or a distribution table drawn per client from ``(seed, "system.<name>")``."""
    value = options.table[name]
    if not isinstance(value, Mapping):
        number = options.number(name, None, minimum=0, open_minimum=strict, finite=True)
        return np.full(num_clients, number)
    table = options.child(name)
    kind = table.text("distribution", None, choices=tuple(DISTRIBUTIONS))
    table.only(
        ("distribution", *DISTRIBUTIONS[kind]),
        f"one of the keys of distribution {kind} ({{known}})",
    )
    generator = rng(seed, f"system.{name}")

    def param(key: str, open_minimum: bool) -> float:
        return table.number(key, None, minimum=0, open_minimum=open_minimum, finite=True)

    if kind == "constant":
        return np.full(num_clients, param("value", strict))
    if kind == "uniform":
        low, high = param("low", strict), param("high", strict)
        if high < low:
            raise table.fail("high", f"a number >= low ({low})", high)
        return low + (high - low) * generator.random(num_clients)
    median, sigma = param("median", True), param("sigma", False)
    return median * np.exp(sigma * generator.standard_normal(num_clients))


def _read_csv(options: Options, num_clients: int) -> pd.DataFrame:
    """The per-client CSV: a ``client`` column holding 0 … N−1 once each, numeric columns."""
    path = options.path(
        "file", "a CSV with a client column and one column per quantity", folder=False
    )
    try:
        frame = pd.read_csv(path)
    except Exception as error:  # a parser error of any kind: one line
        raise options.fail("file", "a readable CSV", f"{path} ({type(error).__name__})") from error
    if "client" not in frame.columns:
        raise options.fail("file", f"a column 'client' in {path}", list(frame.columns))
    clients = frame["client"]
    if not pd.api.types.is_integer_dtype(clients) or clients.duplicated().any():
        raise options.fail("file", f"integer client ids, each once, in {path}")
    missing = sorted(set(range(num_clients)) - set(clients.tolist()))
    extra = sorted(set(clients.tolist()) - set(range(num_clients)))
    if missing or extra:
        what = f"missing {_few(missing)}" if missing else f"unknown {_few(extra)}"
        raise options.fail("file", f"a row for every client 0 … {num_clients - 1} in {path}", what)
    frame = frame.set_index("client").sort_index()
    for column in frame.columns:
        if column in QUANTITIES and not pd.api.types.is_numeric_dtype(frame[column]):
            raise options.fail("file", f"numbers in column {column!r} of {path}")
    frame.attrs["path"] = str(path)
    return frame


def _few(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:5]))
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
