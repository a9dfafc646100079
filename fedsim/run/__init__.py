"""One run, start to finish: scenario → setup (built once) → engine → rounds → results.

- :mod:`fedsim.run.setup`: the scenario turned into everything a run needs, once;
  validation is the same function with placeholders;
- :mod:`fedsim.run.launch`: the engines' launchers (Ray, inline, Flower);
- :mod:`fedsim.run.session`: the strategy built for the grid, the rounds, the
  checkpoint policy;
- :mod:`fedsim.run.loop`: the round loop (Flower's ``Strategy.start``, opened up);
- :mod:`fedsim.run.checkpoint`: what a run needs to go on after a crash;
- :mod:`fedsim.run.entry`: :func:`run_scenario` and :func:`resume_run`.
"""

from fedsim.run.entry import resume_run, run_scenario
from fedsim.run.session import RunControl
from fedsim.run.setup import RunSetup, build_run, validate

__all__ = ["RunControl", "RunSetup", "build_run", "resume_run", "run_scenario", "validate"]
