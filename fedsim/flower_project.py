"""A Flower app project read as ``flwr run`` reads it, and the fedsim scenario around it.

A Flower app is a folder whose ``pyproject.toml`` names its components
(``[tool.flwr.app.components]``: ``serverapp``, ``clientapp``), its run config
(``[tool.flwr.app.config]``) and, in projects made before Flower 1.41, its
federations (``[tool.flwr.federations]``, e.g. ``options.num-supernodes``).
``fedsim run DIR`` runs such a project unchanged; what Flower has no words for
(participation pattern, faults, engine, seed) comes from an optional
``[tool.fedsim]`` table in the same file or a ``--scenario`` overlay, written like a
fedsim scenario's tables.

The number of nodes is, in order: ``data.num_clients`` of the fedsim settings; the
default federation's ``options.num-supernodes`` in the project; the default SuperLink
connection's ``options.num-supernodes`` in ``$FLWR_HOME/config.toml`` (Flower 1.41's
place for it); Flower's own default.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.config import Scenario, apply_overrides, override_pairs, read_toml
from fedsim.errors import FedsimError, ScenarioError

PYPROJECT = "pyproject.toml"
RUN_CONFIG_KEY = "tool.flwr.app.config"
# The fedsim tables a Flower app may use; the rest (model, strategy, rounds, ...) is
# the ServerApp's business.
APP_TABLES = ("name", "seed", "data", "participation", "engine", "log")
FLOWER_TABLE = "flower"  # where the run's scenario.toml records the project

RunConfigValue = bool | int | float | str


@dataclass(frozen=True)
class FlowerProject:
    """A Flower app project: its folder, components, run config and nodes."""

    path: Path
    name: str
    serverapp: str
    clientapp: str
    run_config: dict[str, RunConfigValue]
    num_supernodes: int
    fedsim: dict[str, Any]

    @property
    def pyproject(self) -> Path:
        return self.path / PYPROJECT


def is_flower_project(path: Path) -> bool:
    """Whether ``path`` is a folder with a ``pyproject.toml`` (a Flower app, or a mistake
    that :func:`read_project` names)."""
    return path.is_dir() and (path / PYPROJECT).is_file()


def read_project(
    path: Path,
    *,
    run_config: list[str] | None = None,
    overlay: Path | None = None,
    overrides: list[str] | None = None,
) -> FlowerProject:
    """Read the project in ``path``; ``run_config``: Flower's ``--run-config`` overrides
    (``"key=value ..."`` strings or one TOML file); ``overlay``: a fedsim TOML file whose
    tables update ``[tool.fedsim]``; ``overrides``: fedsim ``--set`` pairs on top."""
    path = path.resolve()
    file = path / PYPROJECT
    if not file.is_file():
        raise FedsimError(f"{path}: not a Flower app project (no {PYPROJECT})")
    try:
        config = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise FedsimError(f"{file}: not valid TOML ({error})") from None
    tool = _table(config, "tool", file)
    flwr = _table(tool, "flwr", file, "tool.flwr")
    app = _table(flwr, "app", file, "tool.flwr.app")
    components = _table(app, "components", file, "tool.flwr.app.components")
    serverapp = _component(components, "serverapp", file)
    clientapp = _component(components, "clientapp", file)
    defaults = _flatten(_table(app, "config", file, RUN_CONFIG_KEY, required=False))
    for key, value in defaults.items():
        if not isinstance(value, RunConfigValue):
            raise ScenarioError(file, f"{RUN_CONFIG_KEY}.{key}", "a bool, int, float or string")
    fused = _fuse_run_config(defaults, _parse_run_config(run_config or []), file)
    fedsim = copy.deepcopy(_table(tool, "fedsim", file, "tool.fedsim", required=False))
    if overlay is not None:  # its tables update [tool.fedsim] key by key, as --set does
        fedsim = apply_overrides(fedsim, list(_flatten(read_toml(overlay)).items()), str(overlay))
    if overrides:
        fedsim = apply_overrides(fedsim, override_pairs(overrides), "--set")
    unknown = sorted(set(fedsim) - set(APP_TABLES))
    if unknown:
        where = overlay if overlay is not None else f"{file} [tool.fedsim]"
        raise FedsimError(
            f"{where}: {unknown[0]}: not used for a Flower app (its ServerApp decides that); "
            f"expected one of {', '.join(APP_TABLES)}"
        )
    project = config.get("project", {})
    name = project.get("name") if isinstance(project, dict) else None
    return FlowerProject(
        path=path,
        name=str(fedsim.get("name") or name or path.name),
        serverapp=serverapp,
        clientapp=clientapp,
        run_config=fused,
        num_supernodes=_num_supernodes(fedsim, flwr, file),
        fedsim=fedsim,
    )


def project_scenario(project: FlowerProject, engine: str | None = None) -> dict[str, Any]:
    """The fedsim scenario (as a dict) that runs ``project``: its nodes and the fedsim
    tables it sets."""
    raw: dict[str, Any] = copy.deepcopy(project.fedsim)
    raw["name"] = project.name
    rounds = project.run_config.get("num-server-rounds")
    raw["rounds"] = rounds if isinstance(rounds, int) and rounds >= 1 else 1
    raw.setdefault("data", {})["num_clients"] = project.num_supernodes
    raw.setdefault("checkpoint", {})["every"] = 0  # a ServerApp's state is its own
    if engine is not None:
        raw.setdefault("engine", {})["kind"] = engine
    return raw


def project_record(project: FlowerProject) -> dict[str, Any]:
    """What the run's ``scenario.toml`` records under ``[flower]``: the project's folder,
    components and resolved run config (a record for readers; no scenario takes it)."""
    return {
        "project": str(project.path),
        "serverapp": project.serverapp,
        "clientapp": project.clientapp,
        "run_config": dict(project.run_config),
    }


def check_engine(scenario: Scenario, project: FlowerProject) -> None:
    """A Flower app runs on fedsim's own engines (Flower's is ``flwr run``)."""
    if scenario.engine.kind not in ("ray", "inline"):
        raise ScenarioError(
            project.pyproject,
            "engine.kind",
            '"ray" or "inline" for a Flower app (Flower\'s own runtime is `flwr run`)',
            got=scenario.engine.kind,
        )


def _table(
    parent: dict[str, Any], name: str, file: Path, key: str | None = None, *, required: bool = True
) -> dict[str, Any]:
    value = parent.get(name)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        key = key or name
        found = "missing" if value is None else f"got {value!r}"
        raise FedsimError(
            f"{file}: [{key}]: expected Flower's app table ({found}); is this a Flower app project?"
        )
    return value


def _component(components: dict[str, Any], name: str, file: Path) -> str:
    value = components.get(name)
    if not isinstance(value, str) or ":" not in value:
        raise ScenarioError(
            file, f"tool.flwr.app.components.{name}", '"module:attribute"', got=value
        )
    return value


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flower's flat run-config keys: nested tables joined with dots."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _parse_run_config(items: list[str]) -> dict[str, Any]:
    """``--run-config`` as Flower reads it: ``"k=v k2=v2"`` (TOML values) or one .toml file.

    Not Flower's own ``parse_config_args``: that drops a pair without ``=`` silently and
    names no key in its error; here each is one line naming the pair or the key."""
    if len(items) == 1 and items[0].endswith(".toml"):
        overlay = Path(items[0]).expanduser()
        try:
            return _flatten(tomllib.loads(overlay.read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise FedsimError(
                f"{overlay}: --run-config: not a readable TOML file ({error})"
            ) from None
    parsed: dict[str, Any] = {}
    for item in items:
        for pair in _split_pairs(item):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise FedsimError(f"--run-config: {pair!r}: expected key=value")
            try:
                parsed[key] = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                raise FedsimError(
                    f"--run-config: {key}: expected a TOML value (a bool, number or "
                    f'"quoted string"), got {value!r}'
                ) from None
    return parsed


def _split_pairs(text: str) -> list[str]:
    """Split ``a=1 b="x y"`` on spaces outside quotes."""
    pairs, current, quote = [], "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char.isspace():
            if current:
                pairs.append(current)
            current = ""
            continue
        current += char
    if current:
        pairs.append(current)
    return pairs


def _fuse_run_config(
    defaults: dict[str, Any], overrides: dict[str, Any], file: Path
) -> dict[str, RunConfigValue]:
    """The defaults with the overrides, each override of the default's type (an int
    where a float is expected is taken as that float)."""
    fused = dict(defaults)
    for key, value in overrides.items():
        name = f"{RUN_CONFIG_KEY}.{key}"
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ScenarioError(file, name, f"a key of the app's run config ({known})")
        default = defaults[key]
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(default, bool) and isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float)
            value = float(value) if ok else value
        else:
            ok = type(value) is type(default)
        if not ok:
            raise ScenarioError(
                file, name, f"a {type(default).__name__} like its default {default!r}", got=value
            )
        fused[key] = value
    return fused


def _num_supernodes(fedsim: dict[str, Any], flwr: dict[str, Any], file: Path) -> int:
    data = fedsim.get("data")
    if isinstance(data, dict) and "num_clients" in data:
        return _count(data["num_clients"], file, "tool.fedsim.data.num_clients")
    found = _default_num_supernodes(flwr.get("federations"), file, "tool.flwr.federations")
    if found is not None:
        return found
    from flwr.supercore.constant import DEFAULT_SIMULATION_CONFIG
    from flwr.supercore.utils import get_flwr_home

    home_config = get_flwr_home() / "config.toml"
    if home_config.is_file():
        try:
            superlink = tomllib.loads(home_config.read_text(encoding="utf-8")).get("superlink")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            superlink = None  # Flower's own CLI reports a broken config file
        found = _default_num_supernodes(superlink, home_config, "superlink")
        if found is not None:
            return found
    return int(DEFAULT_SIMULATION_CONFIG.num_supernodes)


def _default_num_supernodes(table: Any, file: Path, prefix: str) -> int | None:
    """``options.num-supernodes`` of the entry that ``table``'s ``default`` names, if set."""
    if not isinstance(table, dict) or not isinstance(table.get("default"), str):
        return None
    chosen = table.get(table["default"])
    options = chosen.get("options") if isinstance(chosen, dict) else None
    if not isinstance(options, dict) or "num-supernodes" not in options:
        return None
    key = f"{prefix}.{table['default']}.options.num-supernodes"
    return _count(options["num-supernodes"], file, key)


def _count(value: Any, file: Path, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ScenarioError(file, key, "an integer >= 1", got=value)
    return value
