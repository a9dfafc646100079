"""One run, start to finish: scenario → data → engine → rounds → results on disk.

:func:`prepare` does everything that needs no engine (load and partition the
data once into a memory-mapped store, build the initial model, the
participation pattern and the ClientApp); :func:`run_scenario` starts the
chosen engine, discovers the node ↔ client mapping, builds the strategy and
runs the round loop, writing results as it goes. :func:`validate` checks every
option that can be checked without the data before anything is written, and
:func:`resume_run` continues an interrupted run from its checkpoint
(:mod:`fedsim.checkpoint`).
"""

from __future__ import annotations

import functools
import io
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedsim import keys
from fedsim.checkpoint import (
    Checkpoint,
    RunInterrupted,
    arrays_from_numpy,
    arrays_to_numpy,
    load_checkpoint,
    remove_checkpoint,
    restore_rng,
    restore_strategy,
    rng_state,
    save_checkpoint,
    strategy_state,
)
from fedsim.client_app import WHOAMI, ClientSpec, HookedClientApp, make_client_app
from fedsim.client_data import ClientDataStore
from fedsim.config import Scenario, read_toml, scenario_from_dict
from fedsim.datasets import DATASET_NAMES, DATASET_OPTIONS, Dataset, load_dataset
from fedsim.device import resolve_device
from fedsim.engine.identity import node_id_of
from fedsim.engine.reachable import ReachableGrid
from fedsim.engine.serving import CohortPolicy
from fedsim.errors import FedsimError, RunError, ScenarioError
from fedsim.loop import LoopSettings, run_rounds
from fedsim.models import build_model
from fedsim.participation import build_faults, build_pattern
from fedsim.partition import (
    class_balanced_indices,
    label_distribution,
    partition_indices,
    split_each,
)
from fedsim.plugins import load_object, pickle_plugins_for_ray
from fedsim.results import FINAL_MODEL_FILE, SCENARIO_FILE, RunWriter, atomic_write_bytes
from fedsim.seeding import rng
from fedsim.strategies import build_strategy, declared_parameters, resolve_strategy_class
from fedsim.training import evaluate_arrays

DATA_DIR = "client_data"


@dataclass
class Prepared:
    """Everything a run needs before an engine starts."""

    scenario: Scenario
    run_dir: Path
    app: ClientApp
    initial_arrays: ArrayRecord | None
    model: torch.nn.Module | None
    store: ClientDataStore | None
    pattern: Any
    faults: Any
    strategy_class: type
    strategy_options: dict[str, Any]
    proxy_data: tuple[np.ndarray, np.ndarray] | None = None
    model_factory: Callable[[], torch.nn.Module] | None = None


@dataclass(frozen=True)
class ProxyRequest:
    """A server-held proxy set a strategy asked for (``proxy_data``)."""

    per_class: int
    source: str  # "test": carved from the test split; "train": from the training data


PROXY_SOURCES = ("test", "train")


def proxy_request(scenario: Scenario, options: dict[str, Any]) -> ProxyRequest:
    """Take ``proxy_per_class`` / ``proxy_source`` out of the strategy options."""
    per_class = options.pop("proxy_per_class", 10)
    source = options.pop("proxy_source", "test")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ScenarioError(
            scenario.source, "strategy.proxy_per_class", "an integer >= 1", got=per_class
        )
    if source not in PROXY_SOURCES:
        raise ScenarioError(scenario.source, "strategy.proxy_source", "test or train", got=source)
    return ProxyRequest(per_class, source)


def carve_proxy(
    dataset: Dataset, request: ProxyRequest, seed: int
) -> tuple[Dataset, tuple[np.ndarray, np.ndarray]]:
    """Remove a class-balanced proxy set from the test or training split.

    The run never evaluates (or trains clients) on the samples the server learns from.
    """
    generator = rng(seed, "proxy-set")
    if request.source == "test":
        chosen = class_balanced_indices(dataset.y_test, request.per_class, generator)
        keep = np.setdiff1d(np.arange(len(dataset.y_test)), chosen)
        proxy = (dataset.x_test[chosen], dataset.y_test[chosen])
        return replace(dataset, x_test=dataset.x_test[keep], y_test=dataset.y_test[keep]), proxy
    if dataset.natural_partition is not None:
        raise ValueError("proxy_source = 'train' needs a dataset without its own clients")
    chosen = class_balanced_indices(dataset.y_train, request.per_class, generator)
    keep = np.setdiff1d(np.arange(len(dataset.y_train)), chosen)
    proxy = (dataset.x_train[chosen], dataset.y_train[chosen])
    return replace(dataset, x_train=dataset.x_train[keep], y_train=dataset.y_train[keep]), proxy


def partition_data(
    scenario: Scenario, proxy: ProxyRequest | None = None
) -> tuple[Dataset, list[np.ndarray], list[np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Load and partition the scenario's data in memory, writing nothing.

    Returns the data set (proxy set removed), each client's training and local test
    indices into it, and the proxy set (None unless ``proxy`` asks for one).
    """
    data = scenario.data
    assert data.dataset is not None
    dataset = load_dataset(
        data.dataset,
        data.options,
        seed=scenario.seed,
        num_clients=data.num_clients,
        test_fraction=data.test_fraction,
        source=scenario.source,
        base_dir=scenario.base_dir,
    )
    proxy_data = None
    if proxy is not None:
        try:
            dataset, proxy_data = carve_proxy(dataset, proxy, scenario.seed)
        except ValueError as error:
            raise ScenarioError(scenario.source, "strategy.proxy_source", str(error)) from error
    if data.partition == "natural" and dataset.natural_partition is None:
        raise ScenarioError(
            scenario.source, "data.partition", f"not natural: {data.dataset} has no own clients"
        )
    try:
        parts = partition_indices(
            dataset.y_train,
            data.num_clients,
            data.partition,
            rng=rng(scenario.seed, "partition"),
            alpha=data.alpha,
            dirichlet_method=data.dirichlet_method,
            shards_per_client=data.shards_per_client,
            natural=dataset.natural_partition,
        )
    except ValueError as error:
        raise ScenarioError(
            scenario.source, "data.partition", f"a feasible partition ({error})"
        ) from error
    train_parts, test_parts = split_each(
        parts, data.client_test_fraction, rng(scenario.seed, "client-test-split")
    )
    return dataset, train_parts, test_parts, proxy_data


def prepare_data(
    scenario: Scenario, directory: Path, proxy: ProxyRequest | None = None
) -> tuple[ClientDataStore, tuple[np.ndarray, np.ndarray] | None]:
    """Load, partition and store the scenario's data once (memory-mapped afterwards)."""
    dataset, train_parts, test_parts, proxy_data = partition_data(scenario, proxy)
    return ClientDataStore.write(directory, dataset, train_parts, test_parts), proxy_data


def client_label_distribution(scenario: Scenario) -> np.ndarray | None:
    """Each client's training label mix (N × C, rows sum to 1) exactly as a run of
    ``scenario`` partitions its data, without writing the store; None without a dataset.

    It is what :func:`prepare` hands to the participation pattern (label-based rates
    p_n), so ``fedsim participation`` draws the same matrix the run will see.
    """
    if scenario.data.dataset is None:
        return None
    strategy_class = resolve_strategy_class(
        scenario.strategy_name, source=scenario.source, base_dir=scenario.base_dir
    )
    declared, _ = declared_parameters(strategy_class)
    options = scenario.strategy_options
    proxy = proxy_request(scenario, options) if "proxy_data" in declared else None
    dataset, train_parts, _, _ = partition_data(scenario, proxy)
    return label_distribution(dataset.y_train, train_parts, dataset.num_classes)


# Stand-ins for the data's shape in :func:`validate`: every built-in model accepts them.
PLACEHOLDER_INPUT_SHAPE = (3, 32, 32)
PLACEHOLDER_CLASSES = 10


def check_model_table(scenario: Scenario) -> None:
    """The [model] table is there and, without a dataset, names a factory."""
    if not scenario.model:
        raise ScenarioError(
            scenario.source, "model", "a [model] and a [data] dataset (the server's initial model)"
        )
    if scenario.data.dataset is None and "factory" not in scenario.model:
        raise ScenarioError(
            scenario.source, "model.name", "a [model] factory when [data] has no dataset"
        )


def load_user_app(scenario: Scenario) -> ClientApp | None:
    """The user's ClientApp named by ``client.app``; None for fedsim's own."""
    if scenario.client.app is None:
        return None
    app = load_object(
        scenario.client.app, base_dir=scenario.base_dir, source=scenario.source, key="client.app"
    )
    if not isinstance(app, ClientApp):
        raise ScenarioError(
            scenario.source, "client.app", "a flwr ClientApp", got=type(app).__name__
        )
    return app


def _check_dataset_keys(scenario: Scenario) -> None:
    name = scenario.data.dataset
    if name is None:
        return
    if name not in DATASET_OPTIONS:
        raise ScenarioError(
            scenario.source, "data.dataset", f"one of {', '.join(DATASET_NAMES)}", got=name
        )
    for key in scenario.data.options:
        if key not in DATASET_OPTIONS[name]:
            known = ", ".join(sorted(DATASET_OPTIONS[name])) or "none besides the common keys"
            raise ScenarioError(
                scenario.source, f"data.{key}", f"a key that dataset '{name}' takes ({known})"
            )


def _check_model_options(scenario: Scenario) -> Callable[[], torch.nn.Module]:
    """Built-in models are built on the meta device (no memory) with placeholder data
    dimensions; a factory is only imported (its checks need the data's real shape)."""
    spec = scenario.model
    if "factory" in spec and "name" not in spec:
        factory = spec["factory"]
        if not isinstance(factory, str):
            raise ScenarioError(
                scenario.source, "model.factory", '"path/to/file.py:name"', got=factory
            )
        make = load_object(
            factory, base_dir=scenario.base_dir, source=scenario.source, key="model.factory"
        )
        if not callable(make):
            raise ScenarioError(scenario.source, "model.factory", "a callable", got=factory)

        def placeholder() -> torch.nn.Module:
            return torch.nn.Linear(1, 1, device="meta")

        return placeholder
    build = functools.partial(
        build_model,
        spec,
        input_shape=PLACEHOLDER_INPUT_SHAPE,
        num_classes=PLACEHOLDER_CLASSES,
        seed=scenario.seed,
        source=scenario.source,
        base_dir=scenario.base_dir,
    )

    def on_meta() -> torch.nn.Module:
        with torch.device("meta"):
            return build()

    on_meta()
    return on_meta


def validate(scenario: Scenario) -> None:
    """Check every option of ``scenario`` that can be checked without loading its data.

    Runs before anything is written or started: the strategy class and its
    options (the strategy is built once against placeholder data), the proxy-set
    keys, the data set's name and keys, the model table (built-in models on
    the meta device, factories imported), the participation pattern and faults
    (label-based rates against a placeholder label mix), trace, script,
    topology and plugin files, and the user ClientApp. What needs the data
    itself (a data set's values and files, the model against the data's real
    shape) is checked when the data is loaded. Raises a ScenarioError.
    """
    strategy_class = resolve_strategy_class(
        scenario.strategy_name, source=scenario.source, base_dir=scenario.base_dir
    )
    options = scenario.strategy_options
    declared, _ = declared_parameters(strategy_class)
    if "proxy_data" in declared:
        proxy_request(scenario, options)
    _check_dataset_keys(scenario)
    check_model_table(scenario)
    model_factory = _check_model_options(scenario)
    num_clients, seed = scenario.data.num_clients, scenario.seed
    labels = None
    if scenario.data.dataset is not None:
        labels = np.full((num_clients, PLACEHOLDER_CLASSES), 1.0 / PLACEHOLDER_CLASSES)
    build_pattern(
        scenario.participation,
        num_clients=num_clients,
        seed=seed,
        label_distribution=labels,
        source=scenario.source,
        base_dir=scenario.base_dir,
    )
    build_faults(
        scenario.participation,
        num_clients=num_clients,
        seed=seed,
        source=scenario.source,
        base_dir=scenario.base_dir,
    )
    load_user_app(scenario)
    if scenario.client.app is None and scenario.data.dataset is None:
        raise ScenarioError(scenario.source, "data.dataset", "a dataset for fedsim's ClientApp")
    node_ids = [node_id_of(c) for c in range(num_clients)]
    context: dict[str, Any] = {
        "num_clients": num_clients,
        "node_ids": node_ids,
        "seed": seed,
        "device": "cpu",
        "scenario_file": scenario.source,
        "model_factory": model_factory,
        "proxy_data": (np.zeros((1, 1), np.float32), np.zeros(1, np.int64)),
        "participation_probabilities": dict.fromkeys(node_ids, 1.0),
    }
    build_strategy(strategy_class, options, context=context, source=scenario.source)


def prepare(
    scenario: Scenario,
    run_dir: Path,
    *,
    data: tuple[ClientDataStore, tuple[np.ndarray, np.ndarray] | None] | None = None,
) -> Prepared:
    """Everything but the engine. ``data``: an existing store and proxy set (on resume)."""
    strategy_class = resolve_strategy_class(
        scenario.strategy_name, source=scenario.source, base_dir=scenario.base_dir
    )
    strategy_options = scenario.strategy_options
    declared, _ = declared_parameters(strategy_class)
    proxy = proxy_request(scenario, strategy_options) if "proxy_data" in declared else None
    store = None
    model = None
    initial = None
    labels = None
    proxy_data = None
    model_factory = None
    if scenario.data.dataset is not None:
        store, proxy_data = data or prepare_data(scenario, run_dir / DATA_DIR, proxy)
        counts = store.label_counts().astype(float)
        totals = counts.sum(axis=1, keepdims=True)
        labels = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    check_model_table(scenario)
    if scenario.model:
        # Without a dataset (a user ClientApp loads its own), a factory gets placeholder
        # input_shape/num_classes; such a factory should not declare them.
        model_factory = functools.partial(
            build_model,
            scenario.model,
            input_shape=store.input_shape if store is not None else (1,),
            num_classes=store.num_classes if store is not None else 1,
            seed=scenario.seed,
            source=scenario.source,
            base_dir=scenario.base_dir,
        )
        model = model_factory()
        initial = ArrayRecord(model.state_dict())
    pattern = build_pattern(
        scenario.participation,
        num_clients=scenario.data.num_clients,
        seed=scenario.seed,
        label_distribution=labels,
        source=scenario.source,
        base_dir=scenario.base_dir,
    )
    faults = build_faults(
        scenario.participation,
        num_clients=scenario.data.num_clients,
        seed=scenario.seed,
        source=scenario.source,
        base_dir=scenario.base_dir,
    )
    user_app = load_user_app(scenario)
    if user_app is not None:
        app = user_app
    else:
        if store is None:
            raise ScenarioError(scenario.source, "data.dataset", "a dataset for fedsim's ClientApp")
        client = scenario.client
        app = make_client_app(
            ClientSpec.make(
                model=scenario.model,
                data_dir=str(store.directory),
                input_shape=store.input_shape,
                num_classes=store.num_classes,
                seed=scenario.seed,
                source=scenario.source,
                base_dir=str(scenario.base_dir),
                local_steps=client.local_steps,
                local_epochs=client.local_epochs,
                batch_size=client.batch_size,
                lr=client.lr,
                momentum=client.momentum,
                weight_decay=client.weight_decay,
                eval_batch_size=scenario.evaluate.batch_size,
                device=client.device,
            )
        )
    if initial is None:
        raise ScenarioError(
            scenario.source, "model", "a [model] and a [data] dataset (the server's initial model)"
        )
    return Prepared(
        scenario=scenario,
        run_dir=run_dir,
        app=HookedClientApp(app, scenario.client.config),
        initial_arrays=initial,
        model=model,
        store=store,
        pattern=pattern,
        faults=faults,
        strategy_class=strategy_class,
        strategy_options=strategy_options,
        proxy_data=proxy_data,
        model_factory=model_factory,
    )


def central_evaluator(
    prepared: Prepared, device: torch.device
) -> Callable[[int, ArrayRecord], dict[str, float]] | None:
    """Test-set loss and accuracy of the global model, on the server device."""
    if not prepared.scenario.evaluate.central or prepared.model is None or prepared.store is None:
        return None
    model = prepared.model.to(device)
    x, y = prepared.store.central_test()
    batch_size = prepared.scenario.evaluate.batch_size

    def evaluate(_round: int, arrays: ArrayRecord) -> dict[str, float]:
        state = {name: torch.from_numpy(arrays[name].numpy()) for name in arrays}
        model.load_state_dict(state)
        loss, accuracy = evaluate_arrays(model, x, y, device=device, batch_size=batch_size)
        return {"loss": loss, "accuracy": accuracy}

    return evaluate


def discover_nodes(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Ask every node its partition id (Flower's engine assigns random node ids).

    Flower's simulation registers its nodes while the ServerApp is already
    running, so first wait until all of them are there.
    """
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {num_clients} Flower nodes came up")
        time.sleep(0.05)
    messages = [Message(RecordDict({keys.CONFIG: ConfigRecord()}), node, WHOAMI) for node in nodes]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
        partition = reply.content.metric_records[keys.METRICS][keys.PARTITION_ID]
        assert isinstance(partition, int)
        mapping[partition] = reply.metadata.src_node_id
    return mapping


@dataclass
class RunControl:
    """How a caller steers a run: progress callback, stop request, resume point.

    ``stop``: once set (the CLI sets it on Ctrl-C), the run ends after the current
    round, writes a checkpoint and the results so far, and raises RunInterrupted.
    """

    on_round_end: Callable[[int, float | None], None] | None = None
    stop: threading.Event | None = None
    resume: Checkpoint | None = None
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        """Wall time of the run so far, earlier sessions of a resumed run included."""
        before = self.resume.elapsed_s if self.resume is not None else 0.0
        return before + time.monotonic() - self.started


def _origin(scenario: Scenario) -> tuple[str, str]:
    """The scenario file and folder as absolute paths (a resume may run elsewhere)."""
    source = scenario.source
    if Path(source).is_file():
        source = str(Path(source).resolve())
    return source, str(Path(scenario.base_dir).resolve())


def run_session(
    prepared: Prepared,
    grid: Grid,
    node_of_client: dict[int, int],
    writer: RunWriter,
    control: RunControl | None = None,
) -> ArrayRecord:
    """Build the strategy for this grid and run every round (from a checkpoint, if any).

    Checkpoints need the grid's per-node Contexts (``RayGrid.contexts``); Flower's
    own engine keeps them out of reach, so under it no checkpoint is written.
    """
    control = control or RunControl()
    scenario = prepared.scenario
    server_device = resolve_device(scenario.engine.server_device)
    reachable = ReachableGrid(
        grid,
        node_of_client=node_of_client,
        reachable=prepared.pattern.reachable,
        faults=prepared.faults,
    )
    context: dict[str, Any] = {
        "num_clients": scenario.data.num_clients,
        "node_ids": [node_of_client[c] for c in range(scenario.data.num_clients)],
        "seed": scenario.seed,
        "device": str(server_device),
        "scenario_file": scenario.source,
    }
    if prepared.model_factory is not None:
        context["model_factory"] = prepared.model_factory
    if prepared.proxy_data is not None:
        context["proxy_data"] = prepared.proxy_data
    probabilities = getattr(prepared.pattern, "probabilities", None)
    if probabilities is not None:
        context["participation_probabilities"] = {
            node_of_client[c]: float(p) for c, p in enumerate(probabilities)
        }
    strategy = build_strategy(
        prepared.strategy_class,
        prepared.strategy_options,
        context=context,
        source=scenario.source,
    )
    settings = LoopSettings(
        rounds=scenario.rounds,
        seed=scenario.seed,
        timeout=scenario.engine.timeout,
        evaluate_every=scenario.evaluate.every,
        central=central_evaluator(prepared, server_device),
        federated=scenario.evaluate.federated,
        train_config={},
        max_failures=scenario.engine.max_failures_per_round,
        max_failure_fraction=scenario.engine.max_failure_fraction,
    )
    contexts: dict[int, Context] | None = getattr(grid, "contexts", None)
    assert prepared.initial_arrays is not None
    arrays, first_round = prepared.initial_arrays, 1
    if control.resume is not None:
        if contexts is None:
            raise RunError(f"{prepared.run_dir}: this engine cannot resume a run")
        resume = control.resume
        restore_strategy(strategy, resume.strategy)
        contexts.clear()
        contexts.update(resume.contexts)
        arrays, first_round = arrays_from_numpy(resume.arrays), resume.round + 1
        restore_rng(resume.rng)
    unsaved: list[str] = []

    def checkpoint(rnd: int, arrays: ArrayRecord) -> bool:
        writer.flush()
        if contexts is None or unsaved:
            return False
        source, base_dir = _origin(scenario)
        try:
            state = strategy_state(strategy, allow_pickle=scenario.checkpoint_allow_pickle)
        except Exception as error:  # NotData, or whatever pickling (opted in) raises
            unsaved.append(f"{type(error).__name__}: {error}")
            writer.event(rnd, "checkpoint_failed", reason=f"strategy state: {unsaved[0]}")
            writer.flush()
            return False
        save_checkpoint(
            prepared.run_dir,
            Checkpoint(
                round=rnd,
                arrays=arrays_to_numpy(arrays),
                strategy=state,
                contexts=dict(contexts),
                results=writer.snapshot(),
                source=source,
                base_dir=base_dir,
                elapsed_s=control.elapsed(),
                proxy_data=prepared.proxy_data,
                rng=rng_state(),
            ),
        )
        return True

    cohorts = CohortBookkeeping(grid, writer)

    def round_end(rnd: int, arrays: ArrayRecord) -> None:
        cohorts.record(rnd, writer)
        last = rnd == scenario.rounds
        stopping = control.stop is not None and control.stop.is_set() and not last
        every = scenario.checkpoint_every
        saved = False
        if stopping or (every and rnd % every == 0 and not last):
            saved = checkpoint(rnd, arrays)
        if control.on_round_end is not None:
            control.on_round_end(rnd, writer.latest(keys.PHASE_CENTRAL, "accuracy"))
        if stopping:
            raise RunInterrupted(rnd, scenario.rounds, prepared.run_dir, resumable=saved)

    return run_rounds(
        grid=reachable,
        strategy=strategy,
        arrays=arrays,
        settings=settings,
        writer=writer,
        first_round=first_round,
        on_round_end=round_end,
    )


class CohortBookkeeping:
    """Per round, how many train messages a grid served, and how many train and evaluate
    messages in cohorts (timing rows ``train_served``, ``cohort_train``,
    ``cohort_evaluate``); and one ``cohort_fallback`` event per reason, the first time
    messages are served one at a time for it (a resumed run knows its earlier events)."""

    def __init__(self, grid: Grid, writer: RunWriter) -> None:
        self.stats: dict[str, float] | None = getattr(grid, "stats", None)
        self.fallbacks: Counter[str] | None = getattr(grid, "cohort_fallbacks", None)
        self.counted = dict.fromkeys(COHORT_COUNTS, 0.0)
        self.reported = {
            str(e.get("reason")) for e in writer.events if e["event"] == "cohort_fallback"
        }

    def record(self, rnd: int, writer: RunWriter) -> None:
        if self.stats is None:
            return
        rows = [(name, self.stats[name] - self.counted[name]) for name in COHORT_COUNTS]
        writer.metrics(rnd, None, keys.PHASE_TIMING, rows)
        self.counted = {name: self.stats[name] for name in COHORT_COUNTS}
        for reason in sorted(set(self.fallbacks or ()) - self.reported):
            writer.event(rnd, "cohort_fallback", reason=reason)
            self.reported.add(reason)


COHORT_COUNTS = ("train_served", "cohort_train", "cohort_evaluate")


# The longest a Ray actor may take to start (import torch, open the data): not the
# clients' time, so not engine.timeout unless that is longer.
ACTOR_START_TIMEOUT_S = 300.0


def default_num_actors(scenario: Scenario, resources: dict[str, float]) -> int:
    engine = scenario.engine
    if engine.num_actors is not None:
        return min(engine.num_actors, scenario.data.num_clients)
    by_cpu = int(resources.get("CPU", 1) // engine.num_cpus_per_client)
    count = by_cpu
    if engine.num_gpus_per_client > 0:
        count = min(count, int(resources.get("GPU", 0) // engine.num_gpus_per_client))
    return max(1, min(count, scenario.data.num_clients))


RAY_CONNECT_TIMEOUT_S = 10.0


def check_ray_address(scenario: Scenario) -> None:
    """Fail fast on an unreachable ``engine.ray_address`` of the form host:port.

    ``ray.init`` retries such an address for many minutes; a TCP connection
    tells at once. ``auto``, ``local`` and ``ray://`` addresses are left to Ray.
    """
    address = scenario.engine.ray_address
    if address is None or address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ScenarioError(
            scenario.source,
            "engine.ray_address",
            'host:port, "auto" or ray://host:port',
            got=address,
        )
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        raise ScenarioError(
            scenario.source,
            "engine.ray_address",
            f"the address of a running Ray cluster (cannot connect: {error})",
            got=address,
        ) from error


def cohort_policy(scenario: Scenario) -> CohortPolicy:
    """The scenario's ``engine.cohort`` settings, as the engines take them."""
    return CohortPolicy(scenario.engine.cohort, scenario.engine.cohort_memory_mb)


def run_on_ray(prepared: Prepared, writer: RunWriter, control: RunControl) -> ArrayRecord:
    import ray

    pickle_plugins_for_ray()

    from fedsim.engine.ray_grid import RayGrid

    scenario = prepared.scenario
    started_ray = not ray.is_initialized()
    if started_ray:
        check_ray_address(scenario)
        ray.init(
            address=scenario.engine.ray_address,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=True,
        )
    grid = RayGrid(
        prepared.app,
        num_clients=scenario.data.num_clients,
        num_actors=default_num_actors(scenario, ray.cluster_resources()),
        num_cpus_per_actor=scenario.engine.num_cpus_per_client,
        num_gpus_per_actor=scenario.engine.num_gpus_per_client,
        start_timeout=max(scenario.engine.timeout, ACTOR_START_TIMEOUT_S),
        cohort=cohort_policy(scenario),
    )
    try:
        mapping = {c: node_id_of(c) for c in range(scenario.data.num_clients)}
        return run_session(prepared, grid, mapping, writer, control)
    finally:
        grid.shutdown()
        if started_ray:
            ray.shutdown()


def run_inline(prepared: Prepared, writer: RunWriter, control: RunControl) -> ArrayRecord:
    """The scenario with every client served in this process (``engine.kind = "inline"``)."""
    from fedsim.engine.inline_grid import InlineGrid

    num_clients = prepared.scenario.data.num_clients
    grid = InlineGrid(
        prepared.app, num_clients=num_clients, cohort=cohort_policy(prepared.scenario)
    )
    try:
        mapping = {c: node_id_of(c) for c in range(num_clients)}
        return run_session(prepared, grid, mapping, writer, control)
    finally:
        grid.shutdown()


def run_on_flower(prepared: Prepared, writer: RunWriter, control: RunControl) -> ArrayRecord:
    """The same scenario through Flower's own ``run_simulation`` (for parity checks)."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    pickle_plugins_for_ray()

    scenario = prepared.scenario
    outcome: dict[str, Any] = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            mapping = discover_nodes(grid, scenario.data.num_clients, scenario.engine.timeout)
            outcome["arrays"] = run_session(prepared, grid, mapping, writer, control)
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    resources: dict[str, Any] = {"num_cpus": scenario.engine.num_cpus_per_client}
    if scenario.engine.num_gpus_per_client:
        resources["num_gpus"] = scenario.engine.num_gpus_per_client
    run_simulation(
        server_app=app,
        client_app=prepared.app,
        num_supernodes=scenario.data.num_clients,
        backend_config={
            "client_resources": resources,
            "init_args": {"logging_level": "ERROR"},
        },
    )
    if "error" in outcome:
        raise outcome["error"]
    if "arrays" not in outcome:
        raise RuntimeError("Flower's run_simulation ended without running the scenario")
    arrays: ArrayRecord = outcome["arrays"]
    return arrays


ENGINES = {"ray": run_on_ray, "inline": run_inline, "flower": run_on_flower}


def run_scenario(
    scenario: Scenario,
    run_dir: Path,
    *,
    on_round_end: Callable[[int, float | None], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run a scenario into ``run_dir``; returns the directory and the summary.

    ``stop``: set it (from a signal handler, another thread) to end the run after
    the current round with a checkpoint; :class:`RunInterrupted` is raised then.
    """
    validate(scenario)
    control = RunControl(on_round_end=on_round_end, stop=stop)
    writer = RunWriter(run_dir, scenario.raw)
    return run_dir, _execute(scenario, run_dir, writer, control, None)


def resume_run(
    run_dir: Path,
    *,
    on_round_end: Callable[[int, float | None], None] | None = None,
    stop: threading.Event | None = None,
    allow_pickle: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Continue an unfinished run from its checkpoint; returns the directory and summary.

    The scenario is rebuilt from the run's own ``scenario.toml`` (relative paths
    resolved against the original scenario's folder) and its ``client_data`` store;
    the state is the checkpoint's. The final results equal those of an
    uninterrupted run (timing rows aside). Raises a FedsimError naming the
    directory when it holds no unfinished run. ``allow_pickle``: load a strategy
    state pickled under ``[checkpoint] allow_pickle`` (it runs code from the file).
    """
    run_dir = Path(run_dir)
    checkpoint = load_checkpoint(run_dir, allow_pickle=allow_pickle)
    raw = read_toml(run_dir / SCENARIO_FILE)
    scenario = scenario_from_dict(raw, source=checkpoint.source, base_dir=Path(checkpoint.base_dir))
    if scenario.engine.kind == "flower":
        raise FedsimError(f"{run_dir}: runs on Flower's engine cannot be resumed")
    validate(scenario)
    writer = RunWriter(run_dir, scenario.raw)
    writer.restore(checkpoint.results)
    writer.event(checkpoint.round, "resumed", after_round=checkpoint.round)
    control = RunControl(on_round_end=on_round_end, stop=stop, resume=checkpoint)
    data = _stored_data(scenario, run_dir, checkpoint)
    return run_dir, _execute(scenario, run_dir, writer, control, data)


def cohort_summary(writer: RunWriter) -> dict[str, int]:
    """Client-rounds trained in all and in cohorts, from the run's timing rows (a
    resumed run's earlier rounds included)."""
    totals: Counter[str] = Counter()
    for _, client, phase, name, value in writer.metric_rows:
        if client is None and phase == keys.PHASE_TIMING and name in COHORT_COUNTS:
            totals[name] += int(value)
    if not totals:
        return {}  # an engine that does not count (Flower's)
    return {
        "client_rounds": totals["train_served"],
        "cohort_client_rounds": totals["cohort_train"],
        "cohort_evaluations": totals["cohort_evaluate"],
    }


def _stored_data(
    scenario: Scenario, run_dir: Path, checkpoint: Checkpoint
) -> tuple[ClientDataStore, tuple[np.ndarray, np.ndarray] | None] | None:
    """The run's client data store, if it is there and opens (else it is rebuilt)."""
    if scenario.data.dataset is None:
        return None
    try:
        store = ClientDataStore.open(run_dir / DATA_DIR)
    except (OSError, ValueError):
        return None
    if store.num_clients != scenario.data.num_clients:
        return None
    return store, checkpoint.proxy_data


def _execute(
    scenario: Scenario,
    run_dir: Path,
    writer: RunWriter,
    control: RunControl,
    data: tuple[ClientDataStore, tuple[np.ndarray, np.ndarray] | None] | None,
) -> dict[str, Any]:
    """Prepare, run the rounds, write the final model and the summary.

    A run that stops on an error still flushes its results so far, with the
    error as a ``run_stopped`` event.
    """
    try:
        prepared = prepare(scenario, run_dir, data=data)
        engine = ENGINES[scenario.engine.kind]
        arrays = engine(prepared, writer, control)
    except RunInterrupted:
        raise
    except BaseException as error:
        reason = f"{type(error).__name__}: {error}"
        writer.event(writer.last_round(), "run_stopped", reason=reason)
        writer.flush()
        raise
    buffer = io.BytesIO()
    np.savez(buffer, **{name: arrays[name].numpy() for name in arrays})  # type: ignore[arg-type]
    atomic_write_bytes(run_dir / FINAL_MODEL_FILE, buffer.getvalue())
    summary = {
        "name": scenario.name,
        "rounds": scenario.rounds,
        "engine": scenario.engine.kind,
        "wall_time_s": control.elapsed(),
        "final_accuracy": writer.latest(keys.PHASE_CENTRAL, "accuracy"),
        "final_loss": writer.latest(keys.PHASE_CENTRAL, "loss"),
        **cohort_summary(writer),
    }
    writer.finish(summary)
    remove_checkpoint(run_dir)
    return summary
