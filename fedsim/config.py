"""The scenario file: TOML in, a validated :class:`Scenario` out.

Everything a run depends on is in one scenario file (plus ``--set`` overrides),
and it is checked before anything starts: a wrong key, a wrong type, an
out-of-range value or a missing file stops with one line naming the file, the
key and what was expected. This module owns the common tables; the tables whose
keys depend on a choice (the dataset's own options, a model's options, a
participation pattern's parameters, a strategy's constructor options) are
validated by the module that owns that choice, with the same kind of message.
The reference for every key is docs/scenario.md.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedsim.errors import ScenarioError
from fedsim.options import Options
from fedsim.privacy.options import PrivacyConfig, read_privacy

TOP_LEVEL = {
    "name",
    "seed",
    "rounds",
    "data",
    "model",
    "client",
    "participation",
    "strategy",
    "engine",
    "evaluate",
    "checkpoint",
    "log",
    "system",  # read by fedsim.system: the device and network model, simulated time
    "sweep",  # read by fedsim.simulation.sweep; a single run ignores it
    "privacy",  # read by fedsim.privacy.options: differential privacy around the strategy
}
DATA_COMMON = {
    "dataset",
    "num_clients",
    "partition",
    "alpha",
    "dirichlet_method",
    "shards_per_client",
    "test_fraction",
    "client_test_fraction",
}
CLIENT_KEYS = {
    "local_steps",
    "local_epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "app",
    "config",
    "device",
}
ENGINE_KEYS = {
    "kind",
    "cohort",
    "cohort_memory_mb",
    "num_cpus_per_client",
    "num_gpus_per_client",
    "ray_address",
    "allow_unauthenticated_cluster",
    "num_actors",
    "timeout",
    "server_device",
    "max_failures_per_round",
    "max_failure_fraction",
}
EVALUATE_KEYS = {"every", "central", "federated", "batch_size"}
CHECKPOINT_KEYS = {"every", "allow_pickle"}
LOG_KEYS = {"trackers"}
ENGINE_KINDS = ("ray", "inline", "flower")

# Building blocks a script may pass as Python objects instead of by file path: the
# slot's name → the scenario key that names it in a file. The resolved scenario
# (scenario.toml) records such an object as OBJECT_PREFIX + its import path.
OBJECT_SLOTS = {
    "strategy": "strategy.name",
    "participation": "participation.script",
    "client_app": "client.app",
    "model_factory": "model.factory",
}
OBJECT_PREFIX = "python:"


def object_marker(obj: object) -> str:
    """How the resolved scenario names an object passed in by a script.

    >>> object_marker(dict)
    'python:builtins.dict'
    """
    target = obj if isinstance(obj, type) or hasattr(obj, "__qualname__") else type(obj)
    module = getattr(target, "__module__", None) or "?"
    return f"{OBJECT_PREFIX}{module}.{getattr(target, '__qualname__', type(obj).__qualname__)}"


def is_object_marker(value: object) -> bool:
    return isinstance(value, str) and value.startswith(OBJECT_PREFIX)


@dataclass(frozen=True)
class DataConfig:
    dataset: str | None
    num_clients: int
    partition: str
    alpha: float
    dirichlet_method: str
    shards_per_client: int
    test_fraction: float
    client_test_fraction: float
    options: dict[str, Any]


@dataclass(frozen=True)
class ClientConfig:
    local_steps: int | None
    local_epochs: int | None
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    app: str | None
    config: dict[str, Any]
    device: str


@dataclass(frozen=True)
class EngineConfig:
    kind: str
    num_cpus_per_client: float
    num_gpus_per_client: float
    ray_address: str | None
    num_actors: int | None
    timeout: float
    server_device: str
    # Stop the run when more clients than this fail in one round (None: never).
    max_failures_per_round: int | None = None
    max_failure_fraction: float | None = None
    # Train a worker's messages for fedsim's ClientApp as one stacked model: "auto" (as
    # many as fit cohort_memory_mb), "off", or at most this many clients per pass.
    cohort: str | int = "auto"
    cohort_memory_mb: float | None = None
    # Join a Ray cluster (or use a runtime) that has no token authentication.
    allow_unauthenticated_cluster: bool = False

    @property
    def cpu_threads(self) -> int:
        """The threads a worker trains on, on a CPU: its whole CPUs, at least one."""
        return max(1, int(self.num_cpus_per_client))


@dataclass(frozen=True)
class EvaluateConfig:
    every: int
    central: bool
    federated: bool
    batch_size: int


@dataclass(frozen=True)
class Scenario:
    """A validated scenario. ``raw`` is the resolved table written next to the results."""

    source: str
    base_dir: Path
    name: str
    seed: int
    rounds: int
    data: DataConfig
    model: dict[str, Any]
    client: ClientConfig
    participation: dict[str, Any]
    strategy: dict[str, Any]
    engine: EngineConfig
    evaluate: EvaluateConfig
    checkpoint_every: int
    raw: dict[str, Any] = field(repr=False)
    checkpoint_allow_pickle: bool = False  # pickle a strategy state that is not data
    # Trackers that receive the run's metrics besides its parquet tables ([log] trackers).
    trackers: tuple[str, ...] = ()
    # Building blocks passed as Python objects (OBJECT_SLOTS' names → the object).
    objects: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    system: dict[str, Any] | None = None  # the [system] table (None: no simulated time)
    privacy: PrivacyConfig | None = None  # the [privacy] table (None: no differential privacy)

    @property
    def strategy_name(self) -> str:
        return str(self.strategy["name"])

    @property
    def strategy_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.strategy.items() if k != "name"}

    # --- the public constructors (fedsim.Scenario; docs/api.md) ----------------------

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        overrides: Mapping[str, Any] | Iterable[str] | None = None,
        **objects: Any,
    ) -> Scenario:
        """Read, override and validate a scenario file (what ``fedsim run FILE --set ...``
        reads). ``overrides``: ``{"client.lr": 0.05}`` or ``["client.lr=0.05"]``;
        ``objects``: building blocks passed directly (see :meth:`with_objects`).
        Raises :class:`~fedsim.errors.ScenarioError` with the CLI's one-line message.
        """
        path = Path(path)
        raw = apply_overrides(read_toml(path), override_pairs(overrides), str(path))
        return _with_objects(raw, str(path), path.parent, objects)

    @classmethod
    def from_dict(
        cls,
        raw: Mapping[str, Any],
        *,
        base_dir: str | Path | None = None,
        source: str = "<scenario>",
        **objects: Any,
    ) -> Scenario:
        """Validate a scenario given as a dict (the TOML file's tables); relative paths in
        it resolve against ``base_dir`` (default: the current directory).

        >>> s = Scenario.from_dict({"rounds": 2, "data": {"dataset": "mnist1d",
        ...     "num_clients": 4}, "model": {"name": "mlp"}})
        >>> s.name, s.rounds, s.strategy_name
        ('run', 2, 'fedavg')
        """
        base = Path.cwd() if base_dir is None else Path(base_dir)
        return _with_objects(copy.deepcopy(dict(raw)), source, base, objects)

    def with_overrides(self, overrides: Mapping[str, Any] | Iterable[str]) -> Scenario:
        """A new scenario with dotted keys set, validated again; objects are kept.

        >>> s = Scenario.from_dict({"rounds": 2, "data": {"dataset": "mnist1d",
        ...     "num_clients": 4}, "model": {"name": "mlp"}})
        >>> s.with_overrides({"client.lr": 0.5}).client.lr, s.client.lr
        (0.5, 0.01)
        """
        raw = apply_overrides(self.raw, override_pairs(overrides), self.source)
        return _with_objects(raw, self.source, self.base_dir, self.objects)

    def with_objects(
        self,
        *,
        strategy: Any = None,
        participation: Any = None,
        client_app: Any = None,
        model_factory: Any = None,
    ) -> Scenario:
        """A new scenario whose building blocks are these Python objects, in place of a
        file path or registry name: ``strategy`` a Flower strategy class (built with the
        ``[strategy]`` options like a named one) or instance (used as is);
        ``participation`` a function ``(round, clients, rng, **script_args)`` or an
        object with ``reachable(round)``; ``client_app`` a ``flwr.clientapp.ClientApp``;
        ``model_factory`` a callable returning a ``torch.nn.Module`` (it may take
        ``input_shape`` and ``num_classes``). ``None`` keeps the current one.
        """
        given = {
            "strategy": strategy,
            "participation": participation,
            "client_app": client_app,
            "model_factory": model_factory,
        }
        objects = {**self.objects, **{k: v for k, v in given.items() if v is not None}}
        return _with_objects(copy.deepcopy(self.raw), self.source, self.base_dir, objects)

    def to_dict(self) -> dict[str, Any]:
        """The resolved scenario as the dict written to the run's ``scenario.toml``."""
        return copy.deepcopy(self.raw)


def override_pairs(overrides: Mapping[str, Any] | Iterable[str] | None) -> list[tuple[str, Any]]:
    """``{"a.b": v}`` or ``["a.b=v"]`` (``--set`` syntax) → ``[("a.b", v)]``."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        for key in overrides:
            if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
                raise ScenarioError("overrides", str(key), "a dotted key such as client.lr")
        return list(overrides.items())
    if isinstance(overrides, str):
        overrides = [overrides]
    return [parse_override(text) for text in overrides]


def _with_objects(
    raw: dict[str, Any], source: str, base_dir: Path, objects: Mapping[str, Any]
) -> Scenario:
    """Validate ``raw`` with each object's marker at its scenario key."""
    unknown = sorted(set(objects) - set(OBJECT_SLOTS))
    if unknown:
        raise ScenarioError(source, unknown[0], f"a building block among {', '.join(OBJECT_SLOTS)}")
    kept = {name: obj for name, obj in objects.items() if obj is not None}
    for name, obj in kept.items():
        table_name, key = OBJECT_SLOTS[name].split(".")
        table = raw.setdefault(table_name, {})
        if not isinstance(table, dict):
            raise ScenarioError(source, table_name, "a table", got=table)
        if name == "participation":  # it replaces the table's pattern; faults stay
            from fedsim.participation import FAULT_KEYS

            kept_keys = {*FAULT_KEYS, "script_args"}
            for other in [k for k in table if k not in kept_keys]:
                del table[other]
            table["pattern"] = "script"
        table[key] = object_marker(obj)
        if name == "model_factory":
            table.pop("name", None)
    scenario = scenario_from_dict(raw, source=source, base_dir=base_dir)
    for name, key in OBJECT_SLOTS.items():
        table_name, leaf = key.split(".")
        value = raw.get(table_name, {}).get(leaf)
        if name not in kept and is_object_marker(value):
            raise ScenarioError(source, key, f"the Python object it names ({name}=...)", got=value)
    return replace(scenario, objects=kept) if kept else scenario


def parse_override(text: str, source: str = "--set") -> tuple[str, Any]:
    """``"a.b=value"`` → ``("a.b", value)``, the value read as TOML, else as a string.

    >>> parse_override("client.lr=0.05"), parse_override("strategy.name=fedau")
    (('client.lr', 0.05), ('strategy.name', 'fedau'))
    """
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ScenarioError(source, text, "key=value with a dotted key such as client.lr=0.1")
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text
    return key, value


def apply_overrides(
    raw: dict[str, Any], overrides: list[tuple[str, Any]], source: str
) -> dict[str, Any]:
    """A copy of ``raw`` with each dotted key set (tables created as needed)."""
    result = copy.deepcopy(raw)
    for key, value in overrides:
        parts = key.split(".")
        table = result
        for depth, part in enumerate(parts[:-1]):
            child = table.setdefault(part, {})
            if not isinstance(child, dict):
                raise ScenarioError(source, ".".join(parts[: depth + 1]), "a table", got=child)
            table = child
        table[parts[-1]] = value
    return result


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML table of ``path``; a missing file or bad syntax is a ScenarioError."""
    if not path.is_file():
        raise ScenarioError(path, "(file)", "an existing scenario file")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(path, "(syntax)", f"valid TOML ({error})") from error
    except UnicodeDecodeError as error:
        raise ScenarioError(path, "(file)", "a UTF-8 text file") from error


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override and validate a scenario file."""
    path = Path(path)
    raw = read_toml(path)
    parsed = [parse_override(text) for text in overrides or []]
    raw = apply_overrides(raw, parsed, str(path))
    return scenario_from_dict(raw, source=str(path), base_dir=path.parent)


def scenario_from_dict(
    raw: dict[str, Any], *, source: str = "<scenario>", base_dir: Path | None = None
) -> Scenario:
    """Validate a scenario given as a dict (the parsed TOML)."""
    base_dir = Path.cwd() if base_dir is None else base_dir
    top = Options(raw, source=source)
    top.only(TOP_LEVEL)
    name = top.text("name", Path(source).stem if source != "<scenario>" else "run")
    seed = top.integer("seed", 0, minimum=0)
    rounds = top.integer("rounds", None, minimum=1)

    client = _client(top.child("client"))
    data = _data(top.child("data"), user_app=client.app is not None)
    model = dict(top.subtable("model"))
    if client.app is None and not model:
        raise ScenarioError(source, "model", "a [model] table with name or factory")

    participation = dict(top.subtable("participation"))
    participation.setdefault("pattern", "always")
    strategy = dict(top.subtable("strategy"))
    strategy.setdefault("name", "fedavg")
    if not isinstance(strategy["name"], str) or not strategy["name"]:
        raise ScenarioError(source, "strategy.name", "a strategy name", got=strategy["name"])

    engine = _engine(top.child("engine"))
    evaluate_reader = top.child("evaluate")
    evaluate_reader.only(EVALUATE_KEYS)
    evaluate = EvaluateConfig(
        every=evaluate_reader.integer("every", 1, minimum=0),
        central=evaluate_reader.boolean("central", data.dataset is not None),
        federated=evaluate_reader.boolean("federated", False),
        batch_size=evaluate_reader.integer("batch_size", 512, minimum=1),
    )
    if evaluate.central and data.dataset is None:
        raise ScenarioError(source, "evaluate.central", "false when [data] has no dataset")
    checkpoint_reader = top.child("checkpoint")
    checkpoint_reader.only(CHECKPOINT_KEYS)
    checkpoint_every = checkpoint_reader.integer("every", 10, minimum=0)
    checkpoint_allow_pickle = checkpoint_reader.boolean("allow_pickle", False)
    trackers = _trackers(top.child("log"))
    system = dict(top.subtable("system")) if "system" in raw else None
    privacy = read_privacy(top.child("privacy")) if "privacy" in raw else None

    return Scenario(
        source=source,
        base_dir=base_dir,
        name=name,
        seed=seed,
        rounds=rounds,
        data=data,
        model=model,
        client=client,
        participation=participation,
        strategy=strategy,
        engine=engine,
        evaluate=evaluate,
        checkpoint_every=checkpoint_every,
        raw=copy.deepcopy(raw),
        checkpoint_allow_pickle=checkpoint_allow_pickle,
        trackers=trackers,
        system=system,
        privacy=privacy,
    )


TRACKER_NAMES = ("jsonl", "tensorboard", "mlflow", "wandb")


def _trackers(reader: Options) -> tuple[str, ...]:
    """``[log] trackers = ["tensorboard", ...]`` (a single name is a list of one)."""
    reader.only(LOG_KEYS)
    value = reader.table.get("trackers", [])
    names = [value] if isinstance(value, str) else value
    expected = f"a list of tracker names among {', '.join(TRACKER_NAMES)}"
    if not isinstance(names, list) or any(name not in TRACKER_NAMES for name in names):
        raise reader.fail("trackers", expected, value)
    return tuple(dict.fromkeys(names))


# Per-client state (label mixes, participation rates, Flower Contexts) is held in
# memory, so a mistyped count fails here rather than exhausting the machine.
MAX_CLIENTS = 1_000_000


def _data(reader: Options, *, user_app: bool) -> DataConfig:
    dataset = reader.optional_text("dataset")
    if dataset is None and not user_app:
        raise reader.fail("dataset", "a dataset name (see `fedsim list`)")
    num_clients = reader.integer("num_clients", None, minimum=1)
    if num_clients > MAX_CLIENTS:
        raise reader.fail("num_clients", f"an integer from 1 to {MAX_CLIENTS}", num_clients)
    return DataConfig(
        dataset=dataset,
        num_clients=num_clients,
        partition=reader.text(
            "partition", "iid", choices=("iid", "dirichlet", "shards", "natural")
        ),
        alpha=reader.number("alpha", 0.5, minimum=0.0, open_minimum=True),
        dirichlet_method=reader.text(
            "dirichlet_method", "chunks", choices=("chunks", "per-client", "per-label")
        ),
        shards_per_client=reader.integer("shards_per_client", 2, minimum=1),
        test_fraction=reader.number(
            "test_fraction", 0.2, minimum=0.0, maximum=1.0, open_maximum=True
        ),
        client_test_fraction=reader.number(
            "client_test_fraction", 0.0, minimum=0.0, maximum=1.0, open_maximum=True
        ),
        options={k: v for k, v in reader.table.items() if k not in DATA_COMMON},
    )


def _client(reader: Options) -> ClientConfig:
    reader.only(CLIENT_KEYS)
    local_steps = reader.optional_integer("local_steps", minimum=1)
    local_epochs = reader.optional_integer("local_epochs", minimum=1)
    if local_steps is not None and local_epochs is not None:
        raise reader.fail("local_steps", "either local_steps or local_epochs, not both")
    if local_steps is None and local_epochs is None:
        local_epochs = 1
    return ClientConfig(
        local_steps=local_steps,
        local_epochs=local_epochs,
        batch_size=reader.integer("batch_size", 32, minimum=1),
        lr=reader.number("lr", 0.01, minimum=0.0, open_minimum=True),
        momentum=reader.number("momentum", 0.0, minimum=0.0, maximum=1.0, open_maximum=True),
        weight_decay=reader.number("weight_decay", 0.0, minimum=0.0),
        app=reader.optional_text("app"),
        config=reader.subtable("config"),
        device=reader.text("device", "auto"),
    )


def _engine(reader: Options) -> EngineConfig:
    reader.only(ENGINE_KEYS)
    kind = reader.text("kind", "ray", choices=ENGINE_KINDS)
    if kind == "inline":
        # One worker, in the driver process: keys about Ray's workers would be ignored.
        if reader.table.get("num_actors", 1) != 1:
            raise reader.fail(
                "num_actors",
                '1 with kind = "inline" (one worker, in this process)',
                reader.table["num_actors"],
            )
        if "ray_address" in reader.table:
            raise reader.fail(
                "ray_address",
                'no Ray address with kind = "inline" (it runs in this process)',
                reader.table["ray_address"],
            )
    return EngineConfig(
        kind=kind,
        num_cpus_per_client=reader.number(
            "num_cpus_per_client", 1.0, minimum=0.0, open_minimum=True
        ),
        num_gpus_per_client=reader.number("num_gpus_per_client", 0.0, minimum=0.0),
        ray_address=reader.optional_text("ray_address"),
        allow_unauthenticated_cluster=reader.boolean("allow_unauthenticated_cluster", False),
        num_actors=reader.optional_integer("num_actors", minimum=1),
        timeout=reader.number("timeout", 3600.0, minimum=0.0, open_minimum=True),
        server_device=reader.text("server_device", "auto"),
        max_failures_per_round=reader.optional_integer("max_failures_per_round", minimum=0),
        max_failure_fraction=(
            reader.number("max_failure_fraction", 1.0, minimum=0.0, maximum=1.0)
            if "max_failure_fraction" in reader.table
            else None
        ),
        cohort=_cohort(reader),
        cohort_memory_mb=(
            reader.number("cohort_memory_mb", 1.0, minimum=0.0, open_minimum=True)
            if "cohort_memory_mb" in reader.table
            else None
        ),
    )


def _cohort(reader: Options) -> str | int:
    value = reader.table.get("cohort", "auto")
    if value in ("auto", "off"):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise reader.fail("cohort", '"auto", "off" or a number of clients >= 1', value)
