"""The benchmark's workloads, as fedsim scenarios (one scenario per row of the table).

- ``small``: an MLP on MNIST-1D, 100 clients, 10 per round, 5 local steps: per-message
  overhead shows here, since each client trains for a few milliseconds only.
- ``small-50``: the same with 50 clients per round, where cohort training (issue 14)
  has more clients to train in one vectorised pass.
- ``cifar``: the shape of pfl-research's CIFAR-10 benchmark (Granqvist et al., "pfl-research:
  simulation framework for accelerating research in Private Federated Learning",
  https://arxiv.org/abs/2404.06430): 1000 clients × 50 images, 50 per round, one local
  epoch of batch 10, fedsim's ``fedau-cnn``; synthetic CIFAR-shaped data written as an
  ``.npz`` and read through the ``npz`` data set. Compute dominates.
- ``scale``: 100 000 registered clients, 10 per round, next to the same run with 1 000
  clients: the cost of a round must follow the participants, not the registered clients.

Every scenario turns central evaluation and checkpoints off (the plain loop does neither)
and keeps fedsim's result writing, which is part of what fedsim costs.

The ways (:data:`ENGINE_OF`): ``plain`` (:mod:`benchmarks.plain_loop`); fedsim's Ray
engine one message at a time (``fedsim``, ``engine.cohort = "off"``) and with cohort
training (``fedsim+cohort``, ``"auto"``); its inline engine the same two ways (``inline``,
``inline+cohort``); and Flower's simulation runtime (``flower``). Every way sets
``engine.cohort`` explicitly, so the baselines stay one-at-a-time whatever the default.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.seeding import rng

# way -> (engine.kind, engine.cohort); the plain loop uses neither.
ENGINE_OF: dict[str, tuple[str, str]] = {
    "fedsim": ("ray", "off"),
    "fedsim+cohort": ("ray", "auto"),
    "inline": ("inline", "off"),
    "inline+cohort": ("inline", "auto"),
    "flower": ("flower", "off"),
}
# Ways that need Ray (Flower's simulation runtime runs on Ray too).
RAY_WAYS = frozenset(way for way, (kind, _) in ENGINE_OF.items() if kind != "inline")
COHORT_WAYS = frozenset(way for way, (_, cohort) in ENGINE_OF.items() if cohort != "off")
WAYS = ("plain", "fedsim", "fedsim+cohort", "flower")
# With one worker, fedsim's inline engine (the driver serves the clients, no Ray) as well.
ONE_WORKER_WAYS = ("plain", "fedsim", "fedsim+cohort", "inline", "inline+cohort", "flower")
# What runs where Ray is not installed.
INLINE_WAYS = ("plain", "inline", "inline+cohort")


@dataclass(frozen=True)
class Workload:
    """One row group of the table: a scenario, run by ``ways`` with ``actors`` workers.

    >>> w = Workload("x", {"rounds": 3}, warmup=1, actors=2, ways=("plain",))
    >>> w.measured_rounds
    2
    """

    name: str
    scenario: dict[str, Any]
    warmup: int
    actors: int
    ways: tuple[str, ...] = WAYS
    note: str = ""
    group: str = field(default="")

    @property
    def rounds(self) -> int:
        return int(self.scenario["rounds"])

    @property
    def measured_rounds(self) -> int:
        return self.rounds - self.warmup

    def with_engine(self, cpus: float, device: str, way: str | None = None) -> dict[str, Any]:
        """The scenario with engine resources set: ``actors`` workers sharing ``cpus``;
        with ``way``, also the engine kind and ``engine.cohort`` of that way.

        On a GPU every actor asks for ``1 / actors`` of it (``num_gpus_per_client``).

        >>> w = small(rounds=3, warmup=1, actors=1)
        >>> [w.with_engine(2, "cpu", x)["engine"]["cohort"] for x in ("fedsim", "inline+cohort")]
        ['off', 'auto']
        >>> w.with_engine(2, "cpu", "inline+cohort")["engine"]["kind"]
        'inline'
        """
        scenario = copy.deepcopy(self.scenario)
        engine = scenario.setdefault("engine", {})
        engine["num_actors"] = self.actors
        engine["num_cpus_per_client"] = max(cpus / self.actors, 0.01)
        if device == "cuda":
            engine["num_gpus_per_client"] = 1.0 / self.actors
        scenario.setdefault("client", {})["device"] = device
        engine["server_device"] = device
        if way is not None and way != "plain":
            engine["kind"], engine["cohort"] = ENGINE_OF[way]
        return scenario


def base_scenario(name: str, rounds: int, data: dict[str, Any], **tables: Any) -> dict[str, Any]:
    scenario: dict[str, Any] = {
        "name": name,
        "seed": 0,
        "rounds": rounds,
        "data": data,
        "evaluate": {"central": False, "every": 0},
        "checkpoint": {"every": 0},
        "strategy": {"name": "fedavg"},
    }
    scenario.update(tables)
    return scenario


def write_cifar_like(path: Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """Synthetic CIFAR-10-shaped data (``(n, 3, 32, 32)`` float32, 10 classes) as ``.npz``.

    Each class has its own mean image, so the CNN has something to learn.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> with np.load(write_cifar_like(Path(folder.name) / "c.npz", 20, 5)) as f:
    ...     f["x_train"].shape, f["y_test"].shape
    ((20, 3, 32, 32), (5,))
    >>> folder.cleanup()
    """
    generator = rng(seed, "benchmark-cifar")
    means = generator.normal(0.0, 0.5, size=(10, 3, 32, 32)).astype(np.float32)

    def split(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = generator.integers(0, 10, size=count)
        x = generator.standard_normal(size=(count, 3, 32, 32), dtype=np.float32)
        x += means[y]
        return x, y

    x_train, y_train = split(num_train)
    x_test, y_test = split(num_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def cifar_data(folder: Path, clients: int, num_test: int, write: bool = True) -> Path:
    """The CIFAR-shaped data of ``clients`` clients of 50 images, in ``folder``: written once
    (atomically: a run cut short leaves no half file), then reused.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = cifar_data(Path(folder.name), 2, 5)
    >>> path.name, cifar_data(Path(folder.name), 2, 5) == path
    ('cifar-2x50-test5.npz', True)
    >>> folder.cleanup()
    """
    path = folder / f"cifar-{clients}x50-test{num_test}.npz"
    if write and not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{path.name}.{os.getpid()}.partial.npz"
        write_cifar_like(partial, clients * 50, num_test)
        partial.replace(path)
    return path


def write_vectors(path: Path, num_train: int, features: int, seed: int = 0) -> Path:
    """Small random vectors in 10 classes as ``.npz`` (the data of the scale workload)."""
    generator = rng(seed, "benchmark-vectors")
    y = generator.integers(0, 10, size=num_train)
    x = generator.standard_normal(size=(num_train, features), dtype=np.float32)
    x_test = generator.standard_normal(size=(10, features), dtype=np.float32)
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=np.arange(10))
    return path


def small(
    rounds: int,
    warmup: int,
    actors: int,
    per_round: int = 10,
    ways: tuple[str, ...] | None = None,
) -> Workload:
    """``small`` (10 clients per round) or, with ``per_round = 50``, ``small-50``.

    >>> small(3, 1, 1).name, small(3, 1, 2, per_round=50).name
    ('small-1a', 'small-50-2a')
    """
    scenario = base_scenario(
        "small" if per_round == 10 else f"small-{per_round}",
        rounds,
        {"dataset": "mnist1d", "num_clients": 100, "partition": "iid"},
        model={"name": "mlp", "hidden": [200, 200]},
        client={"local_steps": 5, "batch_size": 32, "lr": 0.05},
        participation={"pattern": "uniform", "clients_per_round": per_round},
    )
    return Workload(
        f"small-{actors}a" if per_round == 10 else f"small-{per_round}-{actors}a",
        scenario,
        warmup,
        actors,
        ways=ways or (ONE_WORKER_WAYS if actors == 1 else WAYS),
        note=f"MLP 200-200 on MNIST-1D, 100 clients, {per_round}/round, 5 steps of 32",
        group="small" if per_round == 10 else f"small-{per_round}",
    )


def cifar_scenario(data: Path, clients: int, per_round: int, rounds: int) -> dict[str, Any]:
    """pfl-research's CIFAR-10 shape as a fedsim scenario (evaluation and checkpoints off)."""
    return base_scenario(
        "cifar",
        rounds,
        {"dataset": "npz", "path": str(data), "num_clients": clients, "partition": "iid"},
        model={"name": "fedau-cnn"},
        client={"local_epochs": 1, "batch_size": 10, "lr": 0.05},
        participation={"pattern": "uniform", "clients_per_round": per_round},
    )


def cifar(
    data: Path,
    clients: int,
    per_round: int,
    rounds: int,
    warmup: int,
    actors: int,
    ways: tuple[str, ...],
) -> Workload:
    scenario = cifar_scenario(data, clients, per_round, rounds)
    return Workload(
        f"cifar-{actors}a",
        scenario,
        warmup,
        actors,
        ways=ways,
        note=f"fedau-cnn, {clients} clients x 50 images, {per_round}/round, 1 epoch of 10",
        group="cifar",
    )


def scale(data: Path, clients: int, rounds: int, warmup: int, examples: int) -> Workload:
    scenario = base_scenario(
        "scale",
        rounds,
        {"dataset": "npz", "path": str(data), "num_clients": clients, "partition": "iid"},
        model={"name": "mlp", "hidden": [64]},
        client={"local_steps": 5, "batch_size": examples, "lr": 0.05},
        participation={"pattern": "uniform", "clients_per_round": 10},
    )
    return Workload(
        f"scale-{clients}",
        scenario,
        warmup,
        1,
        ways=("plain", "fedsim"),
        note=f"MLP 64 on {examples} vectors per client, {clients} registered, 10/round",
        group="scale",
    )
