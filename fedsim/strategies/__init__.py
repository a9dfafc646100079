"""Server strategies: fedsim's own, Flower's, and plugins.

A ``[strategy]`` table's ``name`` is one of:

- a registry name (``fedavg``, ``fedau``, ``mifa``, ``fedvarp``, …), see ``fedsim list``;
- ``flwr:ClassName`` — any strategy in ``flwr.serverapp.strategy`` (FedAdam,
  FedProx, FedMedian, …);
- ``path/to/file.py:ClassName`` — a plugin file, relative to the scenario;
- a name registered by an installed package under the entry-point group
  ``fedsim.strategies``.

The table's other keys are constructor options. Besides those, fedsim fills in
the keyword parameters a constructor declares from :class:`StrategyInputs`:

- ``num_clients`` (N, all clients), ``node_ids`` (the N Flower node ids, index =
  client id), ``seed``, ``device`` (the server device);
- ``scenario_file`` (the scenario's path: resolve relative files and name it in errors);
- ``model_factory`` (a callable returning a fresh model of the run's architecture);
- ``proxy_data`` (a server-held ``(x, y)`` set, carved out of the data as the
  ``[strategy]`` keys ``proxy_per_class`` and ``proxy_source`` say);
- ``participation_probabilities`` (node id → long-run rate p_n; oracle
  baselines only: no other strategy ever sees it).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from fedsim.errors import ScenarioError
from fedsim.plugins import is_file_reference, load_object

ENTRY_POINT_GROUP = "fedsim.strategies"
REGISTRY: dict[str, str] = {
    "fedavg": "fedsim.strategies.fedavg:FedAvg",
    "fedau": "fedsim.strategies.fedau:FedAU",
    "mifa": "fedsim.strategies.mifa:MIFA",
    "fedvarp": "fedsim.strategies.fedvarp:FedVARP",
    "fedlaw": "fedsim.strategies.fedlaw:FedLAW",
    "gossip": "fedsim.strategies.gossip:Gossip",
    "gossip-vc": "fedsim.strategies.gossip:VarianceCorrectedGossip",
    "dpsgd": "fedsim.strategies.gossip:DPSGD",
    "fedbuff": "fedsim.strategies.fedbuff:FedBuff",
    "fedasync": "fedsim.strategies.fedasync:FedAsync",
}


@dataclass(frozen=True)
class StrategyInputs:
    """What fedsim passes to a strategy constructor that declares the parameter.

    None means "not available in this run" (no model, no proxy set, a pattern
    without long-run rates): the parameter keeps its default then.
    """

    num_clients: int
    node_ids: list[int]
    seed: int
    device: str
    scenario_file: str
    model_factory: Callable[[], Any] | None = None
    proxy_data: tuple[Any, Any] | None = None
    participation_probabilities: dict[int, float] | None = None


INJECTABLE = tuple(f.name for f in fields(StrategyInputs))
# Flower's strategies wait (forever) for min_*_nodes nodes; under a participation
# pattern fewer may be reachable, so fedsim's default is to wait for none.
FLOWER_NODE_MINIMA = ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes")


def _import(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def available_strategies() -> list[str]:
    """Registry names plus installed plugins' names (``fedsim list``)."""
    plugins = [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return sorted({*REGISTRY, *plugins})


def resolve_strategy_class(name: str, *, source: str, base_dir: Path) -> type:
    key = "strategy.name"
    if name.startswith("flwr:"):
        import flwr.serverapp.strategy as flower_strategies

        cls = getattr(flower_strategies, name[5:], None)
        if not isinstance(cls, type):
            raise ScenarioError(source, key, "a class in flwr.serverapp.strategy", got=name)
        return cls
    if is_file_reference(name):
        cls = load_object(name, base_dir=base_dir, source=source, key=key)
    elif name in REGISTRY:
        cls = _import(REGISTRY[name])
    else:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not matches:
            raise ScenarioError(
                source,
                key,
                f"one of {', '.join(available_strategies())}, flwr:<Class> or file.py:<Class>",
                got=name,
            )
        cls = matches[0].load()
    if not isinstance(cls, type):
        raise ScenarioError(source, key, "a strategy class", got=name)
    return cls


def declared_parameters(cls: type) -> tuple[set[str], bool]:
    """Keyword names a class's constructor accepts, following ``**kwargs`` up the MRO.

    Returns the names and whether arbitrary keywords are accepted in the end.
    """
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:
            return names, False
        parameters = inspect.signature(init).parameters
        names.update(
            name
            for name, p in parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        )
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return names, False
    return names, True


def build_strategy(
    cls: type,
    options: Mapping[str, Any],
    *,
    inputs: StrategyInputs,
    source: str,
) -> Any:
    """Instantiate a strategy class from its scenario options plus fedsim's inputs.

    Only the injectable names the constructor declares are passed, so
    ``participation_probabilities`` reaches an oracle baseline and nothing else.
    """
    parameters, accepts_any = declared_parameters(cls)
    for option in options:
        if option in INJECTABLE:
            raise ScenarioError(source, f"strategy.{option}", "no value: fedsim sets it itself")
        if option not in parameters and not accepts_any:
            known = sorted(p for p in parameters if p not in INJECTABLE)
            raise ScenarioError(
                source, f"strategy.{option}", f"an option of {cls.__name__} ({', '.join(known)})"
            )
    kwargs = dict(options)
    for name in INJECTABLE:
        value = getattr(inputs, name)
        if name in parameters and value is not None:
            kwargs[name] = value
    if cls.__module__.startswith("flwr."):
        for minimum in FLOWER_NODE_MINIMA:
            if minimum in parameters:
                kwargs.setdefault(minimum, 0)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ScenarioError(
            source, "strategy", f"valid options for {cls.__name__} ({error})"
        ) from error
