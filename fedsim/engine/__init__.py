"""Execution engines: how messages from a strategy reach ClientApps and come back.

Every engine presents Flower's ``Grid`` interface to the strategy, so any Flower
Message-API strategy runs unchanged: :mod:`fedsim.engine.ray_grid` (a pool of
long-lived Ray actors) and :mod:`fedsim.engine.inline_grid` (every client in this
process) are fedsim's own, both serving cohorts through :mod:`fedsim.engine.serving`;
Flower's own simulation runtime runs the same scenario for parity checks
(:func:`fedsim.simulation.launch.run_on_flower`); :mod:`fedsim.engine.reachable` puts
the participation pattern in front of any of them, and
:mod:`fedsim.engine.ray_runtime` is where Ray is started or joined.

Importing this package sets two of Ray's environment variables unless they are set
already, since Ray reads them once per process.
"""

import os

# Keep Ray's current behaviour (CPU-only actors see no GPU) without its FutureWarning.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Ray's token authentication (read once per process, when ray loads; see ray_runtime).
os.environ.setdefault("RAY_AUTH_MODE", "token")
