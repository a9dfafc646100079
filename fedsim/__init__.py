"""fedsim: a federated and decentralised training simulator.

Flower ClientApps run on long-lived Ray actors; Flower Message-API strategies
aggregate their updates; scripted participation patterns decide which clients
are reachable in each round. Start with ``fedsim run scenarios/quickstart.toml``
or, from Python (docs/api.md)::

    import fedsim
    scenario = fedsim.Scenario.from_file("scenarios/quickstart.toml", {"rounds": 5})
    run = fedsim.run(scenario, out="runs/quick")      # a fedsim.analysis.Run
    run.central("accuracy")

The public names (:mod:`fedsim.api`) load lazily: ``import fedsim`` imports neither
torch nor Ray.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import stays light)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from typing import Any

    from fedsim.analysis.runs import Run, load_run
    from fedsim.config import Scenario
    from fedsim.errors import FedsimError, RunError, ScenarioError
    from fedsim.simulation.api import resume, run, run_app
    from fedsim.simulation.sweep import sweep

_LAZY = {
    "Scenario": "fedsim.config",
    "resume": "fedsim.simulation.api",
    "run": "fedsim.simulation.api",
    "run_app": "fedsim.simulation.api",
    "sweep": "fedsim.simulation.sweep",
    "Run": "fedsim.analysis.runs",
    "load_run": "fedsim.analysis.runs",
    "FedsimError": "fedsim.errors",
    "ScenarioError": "fedsim.errors",
    "RunError": "fedsim.errors",
}

__all__ = [
    "FedsimError",
    "Run",
    "RunError",
    "Scenario",
    "ScenarioError",
    "__version__",
    "load_run",
    "resume",
    "run",
    "run_app",
    "sweep",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
