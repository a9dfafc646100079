"""A scenario as a Flower run config, and back.

An exported app carries its scenario in ``[tool.flwr.app.config]``, the place Flower
gives an app's settings: Flower flattens nested tables to dotted keys, so the
scenario's ``[client] lr`` is the run-config key ``client.lr`` and ``flwr run DIR
--run-config "client.lr=0.05 rounds=3"`` changes it exactly as ``fedsim run --set``
would. A run config holds only booleans, numbers and strings: a list (``model.hidden
= [64]``) is kept as its TOML text (``"[64]"``) and read back as the list. The
``[sweep]`` table is left out (an app is one run). The deployment's own settings,
which a scenario has no words for, are the ``fedsim.*`` keys
(:class:`DeploymentOptions`).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedsim.config import Scenario
from fedsim.errors import FedsimError

# How errors name the run config: the table of the app's pyproject.toml it comes from.
SOURCE = "pyproject.toml [tool.flwr.app.config]"
OPTIONS_TABLE = "fedsim"
LEFT_OUT = ("sweep",)
PARTICIPATION_MODES = ("connected", "scenario")


@dataclass(frozen=True)
class DeploymentOptions:
    """The ``fedsim.*`` run-config keys of an exported app.

    ``out``: the run directory the ServerApp writes ("": ``runs/NAME-TIME``; a
    relative path is relative to the ServerApp process's folder, the SuperLink's).
    ``participation``: ``connected`` (every connected SuperNode is reachable, as in
    any Flower deployment) or ``scenario`` (the scenario's pattern and faults decide,
    emulated over the real nodes). ``base_dir``: where the scenario's relative paths
    resolve (the exported scenario's folder). ``data_dir``: where each SuperNode keeps
    its data ("": ``$FLWR_HOME/fedsim-data``). ``node_timeout``: seconds the
    ServerApp waits for every SuperNode to connect.
    """

    out: str = ""
    participation: str = "connected"
    base_dir: str = "."
    data_dir: str = ""
    node_timeout: float = 300.0

    def to_table(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "participation": self.participation,
            "base-dir": self.base_dir,
            "data-dir": self.data_dir,
            "node-timeout": self.node_timeout,
        }


def toml_text(value: Any) -> str:
    """``value`` as inline TOML.

    >>> toml_text([64, {"a": "b"}])
    '[64, {"a" = "b"}]'
    """
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))} = {toml_text(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


def _encode(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {k: _encode(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return toml_text(value)
    if isinstance(value, bool | int | float | str):
        return value
    raise FedsimError(f"{key}: a Flower run config holds no {type(value).__name__} values")


def to_run_config(raw: Mapping[str, Any], options: DeploymentOptions) -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` table of an app for the resolved scenario ``raw``.

    >>> to_run_config({"rounds": 2, "model": {"hidden": [64]}}, DeploymentOptions())["model"]
    {'hidden': '[64]'}
    """
    table = {k: _encode(v, k) for k, v in raw.items() if k not in LEFT_OUT}
    table[OPTIONS_TABLE] = options.to_table()
    return table


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        try:
            return tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            return value
    return value


def from_run_config(
    run_config: Mapping[str, Any], source: str
) -> tuple[dict[str, Any], DeploymentOptions]:
    """The scenario table and the deployment options in a (flat) Flower run config.

    >>> raw, options = from_run_config({"rounds": 2, "model.hidden": "[64]",
    ...     "fedsim.participation": "connected"}, "app")
    >>> raw, options.participation
    ({'rounds': 2, 'model': {'hidden': [64]}}, 'connected')
    """
    raw: dict[str, Any] = {}
    given: dict[str, Any] = {}
    for key, value in run_config.items():
        head, _, rest = key.partition(".")
        if head == OPTIONS_TABLE and rest:
            given[rest] = value
            continue
        parts = key.split(".")
        table = raw
        for part in parts[:-1]:
            child = table.setdefault(part, {})
            if not isinstance(child, dict):
                raise FedsimError(f"{source}: {key}: a run-config key inside a value")
            table = child
        table[parts[-1]] = _decode(value)
    return raw, _options(given, source)


def _options(given: Mapping[str, Any], source: str) -> DeploymentOptions:
    defaults = DeploymentOptions()
    fields = defaults.to_table()
    for key, value in given.items():
        if key not in fields:
            raise FedsimError(
                f"{source}: {OPTIONS_TABLE}.{key}: expected one of "
                + ", ".join(f"{OPTIONS_TABLE}.{k}" for k in fields)
            )
        expected = type(fields[key])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise FedsimError(
                f"{source}: {OPTIONS_TABLE}.{key}: expected a {expected.__name__}, got {value!r}"
            )
    participation = str(given.get("participation", defaults.participation))
    if participation not in PARTICIPATION_MODES:
        raise FedsimError(
            f"{source}: {OPTIONS_TABLE}.participation: expected "
            f"{' or '.join(PARTICIPATION_MODES)}, got {participation!r}"
        )
    timeout = float(given.get("node-timeout", defaults.node_timeout))
    if timeout <= 0:
        raise FedsimError(f"{source}: {OPTIONS_TABLE}.node-timeout: expected > 0, got {timeout}")
    return DeploymentOptions(
        out=str(given.get("out", defaults.out)),
        participation=participation,
        base_dir=str(given.get("base-dir", defaults.base_dir)),
        data_dir=str(given.get("data-dir", defaults.data_dir)),
        node_timeout=timeout,
    )


def deployment_scenario(
    run_config: Mapping[str, Any], source: str = SOURCE
) -> tuple[Scenario, DeploymentOptions]:
    """The validated scenario an app's run config holds, as a deployment runs it.

    Its rounds run on Flower's grid (``engine.kind = "flower"`` in the run's records);
    with ``fedsim.participation = "connected"`` the scenario's participation table
    gives way to "every connected node"; a ``[system]`` table (simulated time) is
    refused: a deployment's clock is the real one.
    """
    raw, options = from_run_config(run_config, source)
    engine = raw.setdefault("engine", {})
    if not isinstance(engine, dict):
        raise FedsimError(f"{source}: engine: expected a table, got {engine!r}")
    engine["kind"] = "flower"
    engine.pop("num_actors", None)
    engine.pop("ray_address", None)
    if options.participation == "connected":
        raw["participation"] = {"pattern": "always"}
    scenario = Scenario.from_dict(raw, base_dir=Path(options.base_dir), source=source)
    if scenario.system is not None:
        raise FedsimError(
            f"{source}: system: a deployment runs on real time, not on fedsim's simulated "
            "clock: export the scenario without its [system] table"
        )
    return scenario, options
