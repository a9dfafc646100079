"""One run, start to finish: scenario → setup (built once) → engine → rounds → results.

- :mod:`fedsim.run.setup`: the scenario turned into everything a run needs, once;
  validation is the same function with placeholders;
- :mod:`fedsim.run.launch`: the engines' launchers (Ray, inline, Flower);
- :mod:`fedsim.run.session`: the strategy built for the grid, the rounds, the
  checkpoint policy;
- :mod:`fedsim.run.loop`: the round loop (Flower's ``Strategy.start``, opened up);
- :mod:`fedsim.run.checkpoint`: what a run needs to go on after a crash;
- :mod:`fedsim.run.entry`: :func:`run_scenario` and :func:`resume_run`.

This package is also the public function ``fedsim.run(scenario, ...)``
(:func:`fedsim.run.api.run`): ``fedsim.run`` names both, so the package module is
callable. Its attributes load lazily, so ``import fedsim`` stays light (no torch).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedsim.run.entry import resume_run, run_scenario
    from fedsim.run.session import RunControl
    from fedsim.run.setup import RunSetup, build_run, validate

_LAZY = {
    "resume_run": "fedsim.run.entry",
    "run_scenario": "fedsim.run.entry",
    "RunControl": "fedsim.run.session",
    "RunSetup": "fedsim.run.setup",
    "build_run": "fedsim.run.setup",
    "validate": "fedsim.run.setup",
}

__all__ = ["RunControl", "RunSetup", "build_run", "resume_run", "run_scenario", "validate"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedsim.run' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """``fedsim.run(scenario, ...)`` calls :func:`fedsim.run.api.run`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from fedsim.run.api import run

        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
