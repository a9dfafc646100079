"""A scenario turned into everything a run needs, built once by one function.

:func:`build_run` resolves the strategy (class, constructor options, the proxy
set it asks for), loads and partitions the data into the run's store, builds
the model factory and the initial model, the participation pattern, the faults
and the ClientApp, and records the per-client facts the results keep
(:class:`fedsim.results.ClientFacts`). :func:`validate` is the same function
with placeholders instead of the data (a uniform label mix, the model on the
meta device, a strategy built against stand-in inputs), so every option that
can be checked without loading data is checked before anything is written.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.clientapp import ClientApp

from fedsim.client.app import ClientSpec, HookedClientApp, make_client_app
from fedsim.config import Scenario
from fedsim.data.datasets import DATASET_NAMES, DATASET_OPTIONS
from fedsim.data.partition import label_distribution
from fedsim.data.prepare import (
    PROXY_SOURCES,
    ProxyRequest,
    ProxySet,
    label_mix,
    partition_data,
    prepare_data,
)
from fedsim.data.store import ClientDataStore
from fedsim.engine.identity import node_id_of
from fedsim.errors import ScenarioError
from fedsim.models import build_model
from fedsim.participation import build_faults, build_pattern
from fedsim.participation.script import ScriptPattern
from fedsim.plugins import load_object
from fedsim.privacy.accounting import Sampling, sampling_of
from fedsim.privacy.local import LocalPrivacy
from fedsim.privacy.wrapper import PrivateStrategy
from fedsim.results import CLIENT_DATA_DIR, ClientFacts
from fedsim.strategies import (
    StrategyInputs,
    build_strategy,
    declared_parameters,
    resolve_strategy_class,
)
from fedsim.system import SystemModel, build_system
from fedsim.system.profile import Work

# Stand-ins for the data in :func:`validate`: every built-in model accepts them.
PLACEHOLDER_INPUT_SHAPE = (3, 32, 32)
PLACEHOLDER_CLASSES = 10
PLACEHOLDER_PROXY: ProxySet = (np.zeros((1, 1), np.float32), np.zeros(1, np.int64))


@dataclass(frozen=True)
class StrategyChoice:
    """The scenario's strategy: its class, its constructor options (fedsim's own
    ``proxy_*`` keys taken out) and the proxy set it asks for, if any."""

    cls: type
    options: dict[str, Any]
    proxy: ProxyRequest | None
    instance: Any = None  # a strategy object a script passed in: used as is

    def build(self, inputs: StrategyInputs, source: str) -> Any:
        """A fresh strategy for ``inputs`` (the grid's node ids are known by then)."""
        if self.instance is not None:
            return self.instance
        return build_strategy(self.cls, self.options, inputs=inputs, source=source)


@dataclass
class RunSetup:
    """Everything a run needs before an engine starts."""

    scenario: Scenario
    run_dir: Path | None
    app: ClientApp
    initial_arrays: ArrayRecord
    model: torch.nn.Module | None
    store: ClientDataStore | None
    pattern: Any
    faults: Any
    strategy: StrategyChoice
    proxy_data: ProxySet | None = None
    model_factory: Callable[[], torch.nn.Module] | None = None
    system: SystemModel | None = None  # the [system] table's devices; None: no simulated time

    def strategy_inputs(self, node_of_client: dict[int, int], device: str) -> StrategyInputs:
        """What a strategy constructor may receive, for a grid's node ids."""
        n = self.scenario.data.num_clients
        probabilities = getattr(self.pattern, "probabilities", None)
        return StrategyInputs(
            num_clients=n,
            node_ids=[node_of_client[c] for c in range(n)],
            seed=self.scenario.seed,
            device=device,
            scenario_file=self.scenario.source,
            model_factory=self.model_factory,
            proxy_data=self.proxy_data,
            participation_probabilities=None
            if probabilities is None
            else {node_of_client[c]: float(p) for c, p in enumerate(probabilities)},
        )

    def build_strategy(self, inputs: StrategyInputs) -> Any:
        """The scenario's strategy for ``inputs``, inside the privacy wrapper when the
        scenario has a ``[privacy]`` table."""
        strategy = self.strategy.build(inputs, self.scenario.source)
        privacy = self.scenario.privacy
        if privacy is None:
            return strategy
        if importlib.util.find_spec("dp_accounting") is None:
            raise ScenarioError(
                self.scenario.source,
                "privacy",
                "the dp-accounting package for its accountant (pip install 'fedsim[privacy]')",
            )
        train = None if self.store is None else self.store.num_train_examples()
        try:
            return PrivateStrategy(
                strategy,
                privacy,
                num_clients=inputs.num_clients,
                seed=self.scenario.seed,
                sampling=self.sampling(getattr(strategy, "fraction_train", 1.0)),
                max_examples=None if train is None else float(np.max(train)),
            )
        except ValueError as error:
            raise ScenarioError(
                self.scenario.source, "privacy", f"a strategy it can wrap: {error}"
            ) from None

    def sampling(self, fraction: float) -> Sampling:
        """How the participation pattern samples clients, as the privacy accountant
        takes it (local DP: the server sees who sends, so no amplification)."""
        assert self.scenario.privacy is not None
        return sampling_of(
            str(self.scenario.participation.get("pattern", "always")),
            local=self.scenario.privacy.mode == "local",
            num_clients=self.scenario.data.num_clients,
            probabilities=getattr(self.pattern, "probabilities", None),
            fraction=fraction,
            amplitude=float(getattr(self.pattern, "amplitude", 0.0)),
        )

    def client_facts(self) -> ClientFacts:
        """The per-client facts the run directory keeps for the analysis."""
        probabilities = getattr(self.pattern, "probabilities", None)
        store = self.store
        return ClientFacts(
            num_clients=self.scenario.data.num_clients,
            train_examples=None if store is None else store.num_train_examples(),
            test_examples=None if store is None else store.num_test_examples(),
            label_mix=None if store is None else label_mix(store),
            participation_probability=None
            if probabilities is None
            else np.asarray(probabilities, dtype=np.float64),
        )


def choose_strategy(scenario: Scenario) -> StrategyChoice:
    """The strategy class, its options and its proxy request (the scenario is not changed)."""
    given = scenario.objects.get("strategy")
    options = scenario.strategy_options
    if given is not None and not isinstance(given, type):
        if options:
            raise ScenarioError(
                scenario.source,
                f"strategy.{next(iter(options))}",
                "no [strategy] options with a strategy instance (pass its class instead)",
            )
        return StrategyChoice(type(given), {}, None, instance=given)
    if given is not None:
        cls = given
    else:
        cls = resolve_strategy_class(
            scenario.strategy_name, source=scenario.source, base_dir=scenario.base_dir
        )
    declared, _ = declared_parameters(cls)
    proxy = None
    if "proxy_data" in declared:
        per_class = options.pop("proxy_per_class", 10)
        source = options.pop("proxy_source", "test")
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
            raise ScenarioError(
                scenario.source, "strategy.proxy_per_class", "an integer >= 1", got=per_class
            )
        if source not in PROXY_SOURCES:
            raise ScenarioError(
                scenario.source, "strategy.proxy_source", "test or train", got=source
            )
        proxy = ProxyRequest(per_class, source)
    return StrategyChoice(cls, options, proxy)


def client_label_distribution(scenario: Scenario) -> np.ndarray | None:
    """Each client's training label mix (N × C, rows sum to 1) exactly as a run of
    ``scenario`` partitions its data, without writing the store; None without a dataset.

    It is what :func:`build_run` hands to the participation pattern (label-based
    rates p_n), so ``fedsim participation`` draws the same matrix the run will see.
    """
    if scenario.data.dataset is None:
        return None
    dataset, train_parts, _, _ = partition_data(scenario, choose_strategy(scenario).proxy)
    return label_distribution(dataset.y_train, train_parts, dataset.num_classes)


def build_participation(scenario: Scenario, labels: np.ndarray | None) -> tuple[Any, Any]:
    """The scenario's participation pattern (label-based rates from ``labels``, each
    client's label mix) and its in-round faults (None without any)."""
    n, seed, source, base_dir = (
        scenario.data.num_clients,
        scenario.seed,
        scenario.source,
        scenario.base_dir,
    )
    given = scenario.objects.get("participation")
    if given is not None:
        pattern = _participation_object(scenario, given)
    else:
        pattern = build_pattern(
            scenario.participation,
            num_clients=n,
            seed=seed,
            label_distribution=labels,
            source=source,
            base_dir=base_dir,
        )
    table = scenario.participation
    if scenario.system is not None:
        # With [system] the deadline is simulated seconds (fedsim.system reads it) and
        # the latency is the system model's: the faults keep only the dropout.
        table = {k: v for k, v in table.items() if k not in ("deadline", "latency")}
    faults = build_faults(table, num_clients=n, seed=seed, source=source, base_dir=base_dir)
    return pattern, faults


def _participation_object(scenario: Scenario, given: Any) -> Any:
    """A pattern object (it has ``reachable``) as is; a function as a script pattern."""
    if hasattr(given, "reachable"):
        return given
    if not callable(given):
        raise ScenarioError(
            scenario.source,
            "participation",
            "a function (round, clients, rng) or an object with reachable(round)",
            got=type(given).__name__,
        )
    kwargs = scenario.participation.get("script_args", {})
    if not isinstance(kwargs, dict):
        raise ScenarioError(scenario.source, "participation.script_args", "a table", got=kwargs)
    return ScriptPattern(
        given,
        num_clients=scenario.data.num_clients,
        seed=scenario.seed,
        kwargs=kwargs,
        source=scenario.source,
        spec=str(scenario.participation["script"]),
    )


def model_table(scenario: Scenario) -> dict[str, Any]:
    """The [model] table with a model factory passed as an object put in place of its name."""
    given = scenario.objects.get("model_factory")
    return scenario.model if given is None else {**scenario.model, "factory": given}


def build_system_model(scenario: Scenario, store: ClientDataStore | None) -> SystemModel | None:
    """The [system] table's device and network model (None without the table)."""
    client = scenario.client
    return build_system(
        scenario.system,
        scenario.participation,
        num_clients=scenario.data.num_clients,
        seed=scenario.seed,
        source=scenario.source,
        base_dir=scenario.base_dir,
        work=Work(
            local_steps=client.local_steps,
            local_epochs=client.local_epochs,
            batch_size=client.batch_size,
            train_examples=None if store is None else store.num_train_examples(),
        ),
    )


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
    """The user's ClientApp named by ``client.app`` or passed in; None for fedsim's own."""
    if scenario.client.app is None:
        return None
    app = scenario.objects.get("client_app")
    if app is None:
        app = load_object(
            scenario.client.app,
            base_dir=scenario.base_dir,
            source=scenario.source,
            key="client.app",
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


def _placeholder_model(scenario: Scenario) -> Callable[[], torch.nn.Module]:
    """Built-in models are built on the meta device (no memory) with placeholder data
    dimensions; a factory is only imported (its checks need the data's real shape)."""
    spec = model_table(scenario)
    if "factory" in spec and "name" not in spec:
        factory = spec["factory"]
        if callable(factory):
            make = factory
        elif not isinstance(factory, str):
            raise ScenarioError(
                scenario.source, "model.factory", '"path/to/file.py:name"', got=factory
            )
        else:
            make = load_object(
                factory, base_dir=scenario.base_dir, source=scenario.source, key="model.factory"
            )
        if not callable(make):
            raise ScenarioError(scenario.source, "model.factory", "a callable", got=factory)

        def placeholder() -> torch.nn.Module:
            return torch.nn.Linear(1, 1, device="meta")

        return placeholder
    build = _model_factory(scenario, PLACEHOLDER_INPUT_SHAPE, PLACEHOLDER_CLASSES)

    def on_meta() -> torch.nn.Module:
        with torch.device("meta"):
            return build()

    on_meta()
    return on_meta


def _model_factory(
    scenario: Scenario, input_shape: tuple[int, ...], num_classes: int
) -> Callable[[], torch.nn.Module]:
    return functools.partial(
        build_model,
        model_table(scenario),
        input_shape=input_shape,
        num_classes=num_classes,
        seed=scenario.seed,
        source=scenario.source,
        base_dir=scenario.base_dir,
    )


def _fedsim_app(scenario: Scenario, store: ClientDataStore) -> ClientApp:
    client = scenario.client
    return make_client_app(
        ClientSpec.make(
            model=model_table(scenario),
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
            cpu_threads=scenario.engine.cpu_threads,
        )
    )


def build_run(
    scenario: Scenario,
    run_dir: Path | None,
    *,
    data: tuple[ClientDataStore, ProxySet | None] | None = None,
) -> RunSetup:
    """Everything but the engine, built once.

    ``run_dir`` None: placeholders instead of the data (that is :func:`validate`);
    nothing is loaded or written. ``data``: the run's existing store and proxy set
    (on resume), else the data is loaded and stored under ``run_dir``.
    """
    placeholders = run_dir is None
    strategy = choose_strategy(scenario)
    _check_dataset_keys(scenario)
    check_model_table(scenario)
    n = scenario.data.num_clients
    store: ClientDataStore | None = None
    proxy_data: ProxySet | None = None
    labels: np.ndarray | None = None
    if scenario.data.dataset is not None:
        if placeholders:
            labels = np.full((n, PLACEHOLDER_CLASSES), 1.0 / PLACEHOLDER_CLASSES)
            proxy_data = PLACEHOLDER_PROXY if strategy.proxy is not None else None
        else:
            assert run_dir is not None
            store, proxy_data = data or prepare_data(
                scenario, run_dir / CLIENT_DATA_DIR, strategy.proxy
            )
            labels = label_mix(store)
    if placeholders:
        model_factory = _placeholder_model(scenario)
        model = None
        initial = ArrayRecord()
    else:
        # Without a dataset (a user ClientApp loads its own), a factory gets placeholder
        # input_shape/num_classes; such a factory should not declare them.
        model_factory = _model_factory(
            scenario,
            store.input_shape if store is not None else (1,),
            store.num_classes if store is not None else 1,
        )
        model = model_factory()
        initial = ArrayRecord(model.state_dict())
    system = build_system_model(scenario, store)
    if getattr(strategy.cls, "asynchronous", False) and system is None:
        raise ScenarioError(
            scenario.source,
            "strategy.name",
            "a [system] table too (an asynchronous strategy follows the simulated clock)",
            got=scenario.strategy_name,
        )
    pattern, faults = build_participation(scenario, labels)
    if getattr(pattern, "time_period", None) is not None and system is None:
        raise ScenarioError(
            scenario.source,
            "participation.clock",
            '"rounds" without a [system] table (simulated time needs one)',
            got="simulated",
        )
    app = load_user_app(scenario)
    if app is None:
        if scenario.data.dataset is None:
            raise ScenarioError(scenario.source, "data.dataset", "a dataset for fedsim's ClientApp")
        # Under placeholders the app is not built: it would need the store's folder.
        app = ClientApp() if store is None else _fedsim_app(scenario, store)
    return RunSetup(
        scenario=scenario,
        run_dir=run_dir,
        app=HookedClientApp(app, scenario.client.config, _local_privacy(scenario)),
        initial_arrays=initial,
        model=model,
        store=store,
        pattern=pattern,
        faults=faults,
        strategy=strategy,
        proxy_data=proxy_data,
        model_factory=model_factory,
        system=system,
    )


def _local_privacy(scenario: Scenario) -> LocalPrivacy | None:
    privacy = scenario.privacy
    if privacy is None or privacy.mode != "local":
        return None
    return LocalPrivacy(privacy.clip_norm, privacy.noise_multiplier, scenario.seed)


def validate(scenario: Scenario) -> None:
    """Check every option of ``scenario`` that can be checked without loading its data.

    Runs before anything is written or started: :func:`build_run` with
    placeholders (the strategy class and its options, the proxy-set keys, the
    data set's name and keys, the model table with built-in models on the meta
    device and factories imported, the participation pattern and faults against a
    placeholder label mix, trace, script, topology and plugin files, the user
    ClientApp), then the strategy built against stand-in inputs. What needs the
    data itself (a data set's values and files, the model against the data's real
    shape) is checked when the data is loaded. Raises a ScenarioError.
    """
    setup = build_run(scenario, None)
    node_of_client = {c: node_id_of(c) for c in range(scenario.data.num_clients)}
    inputs = setup.strategy_inputs(node_of_client, "cpu")
    if inputs.participation_probabilities is None:  # an oracle baseline's stand-in
        inputs = replace(inputs, participation_probabilities=dict.fromkeys(inputs.node_ids, 1.0))
    setup.build_strategy(inputs)
