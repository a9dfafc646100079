"""Load user code named in a scenario: ``"path/to/file.py:name"``.

Scenario files point at user strategies, models, ClientApps and participation
scripts by file path, relative to the scenario file's folder. Loading is one
function so that every plugin kind reports a bad path the same way: one line
naming the scenario file, the key and what was expected.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from fedsim.errors import ScenarioError

_BY_VALUE: list[ModuleType] = []  # plugin files loaded in this process


def is_file_reference(spec: str) -> bool:
    """Whether ``spec`` names an object in a Python file (``file.py:name``).

    >>> is_file_reference("plugins/ldawa.py:LDAWA"), is_file_reference("fedavg")
    (True, False)
    """
    path, sep, name = spec.rpartition(":")
    return bool(sep) and path.endswith(".py") and bool(name)


def load_object(spec: str, *, base_dir: str | Path, source: str | Path, key: str) -> Any:
    """Import ``name`` from the Python file ``path`` in ``"path:name"``.

    ``path`` is resolved against ``base_dir`` (the scenario file's folder) when
    it is relative. Errors name ``source`` (the scenario file) and ``key``.
    """
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not name.isidentifier():
        raise ScenarioError(source, key, '"path/to/file.py:name"', got=spec)
    path = Path(path_text)
    if not path.is_absolute():
        path = Path(base_dir) / path
    path = path.resolve()
    if not path.is_file():
        raise ScenarioError(source, key, f"an existing file ({path} does not exist)", got=spec)
    module_name = "fedsim_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ScenarioError(source, key, "an importable Python file", got=spec)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[module_name]
            raise ScenarioError(
                source, key, f"a file that imports cleanly ({type(error).__name__}: {error})"
            ) from error
        register_by_value(module)
    if not hasattr(module, name):
        raise ScenarioError(source, key, f"{path.name} to define {name!r}", got=spec)
    return getattr(module, name)


def register_by_value(module: ModuleType) -> None:
    """Pickle ``module``'s objects by value: nothing else can import it by name.

    Registered with cloudpickle (checkpoints) now, and with Ray's own copy of it (a
    ClientApp or a model factory sent to Ray workers) now where Ray is installed; where
    it is not, nothing goes to Ray workers. A module registered already is left as is (a
    Flower app's ServerApp and ClientApp live in one package).
    """
    if module in _BY_VALUE:
        return
    _BY_VALUE.append(module)
    try:
        import cloudpickle
    except ImportError:  # then checkpoints pickle with plain pickle (fedsim.simulation.checkpoint)
        pass
    else:
        cloudpickle.register_pickle_by_value(module)
    if "ray" in sys.modules:  # a plugin loaded after the engine imported Ray
        pickle_plugins_for_ray()


def pickle_plugins_for_ray() -> None:
    """Have Ray pickle every plugin file loaded so far by value; call after ``import ray``,
    before sending a plugin's object to a Ray worker (later plugins register themselves)."""
    from ray import cloudpickle

    for module in _BY_VALUE:
        cloudpickle.register_pickle_by_value(module)
