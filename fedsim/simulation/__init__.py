"""Running simulations: one run, start to finish (scenario → setup built once → engine →
rounds → results), and sweeps of many.

- :mod:`fedsim.simulation.setup`: the scenario turned into everything a run needs, once;
  validation is the same function with placeholders;
- :mod:`fedsim.simulation.launch`: the engines' launchers (Ray, inline, Flower);
- :mod:`fedsim.simulation.session`: the strategy built for the grid, the rounds, the
  checkpoint policy;
- :mod:`fedsim.simulation.loop`: the round loop (Flower's ``Strategy.start``, opened up);
- :mod:`fedsim.simulation.checkpoint`: what a run needs to go on after a crash;
- :mod:`fedsim.simulation.entry`: :func:`run_scenario` and :func:`resume_run`;
- :mod:`fedsim.simulation.api`: the public ``fedsim.run`` and ``fedsim.resume``;
- :mod:`fedsim.simulation.sweep`: a grid of runs (``fedsim sweep``, ``fedsim.sweep``).

The attributes load lazily, so importing the package stays light (no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedsim.simulation.entry import resume_run, run_scenario
    from fedsim.simulation.session import RunControl
    from fedsim.simulation.setup import RunSetup, build_run, validate

_LAZY = {
    "resume_run": "fedsim.simulation.entry",
    "run_scenario": "fedsim.simulation.entry",
    "RunControl": "fedsim.simulation.session",
    "RunSetup": "fedsim.simulation.setup",
    "build_run": "fedsim.simulation.setup",
    "validate": "fedsim.simulation.setup",
}

__all__ = ["RunControl", "RunSetup", "build_run", "resume_run", "run_scenario", "validate"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedsim.simulation' has no attribute {name!r}")
