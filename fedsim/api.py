"""fedsim's public Python API: what scenario scripts, notebooks and the CLI call.

Three verbs over one noun. A :class:`~fedsim.config.Scenario` is read from a file
(:meth:`Scenario.from_file`) or a dict (:meth:`Scenario.from_dict`), changed with
:meth:`Scenario.with_overrides` and given Python objects as building blocks with
:meth:`Scenario.with_objects`; :func:`run` runs it and returns the run as
:func:`fedsim.analysis.load_run` reads it back (:func:`run_app` runs a Flower app
project the same way); :func:`sweep` runs it over a grid
and seeds (:func:`plan_sweep` plans it without running); :func:`resume` continues
an interrupted run. ``fedsim run``, ``fedsim sweep`` and ``fedsim resume`` are
these functions plus a progress bar, so a mistake raises the same
:class:`~fedsim.errors.FedsimError` (one line) that the CLI prints. The stability
promise is in docs/api.md. The functions live beside what they drive
(:mod:`fedsim.simulation.api`, :mod:`fedsim.simulation.sweep`); this module gathers them.
"""

from fedsim.config import Scenario
from fedsim.simulation.api import default_run_dir, resume, run, run_app
from fedsim.simulation.sweep import plan_sweep, sweep

__all__ = ["Scenario", "default_run_dir", "plan_sweep", "resume", "run", "run_app", "sweep"]
