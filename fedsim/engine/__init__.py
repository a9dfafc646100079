"""Execution engines: how messages from a strategy reach ClientApps and come back.

Both engines present Flower's ``Grid`` interface to the strategy, so any Flower
Message-API strategy runs unchanged: :mod:`fedsim.engine.ray_grid` is fedsim's
own (a pool of long-lived Ray actors), :mod:`fedsim.engine.flower_engine` runs
the same scenario through Flower's ``run_simulation`` for parity checks, and
:mod:`fedsim.engine.reachable` puts the participation pattern in front of
either.
"""

import os

# Keep Ray's current behaviour (CPU-only actors see no GPU) without its FutureWarning.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Ray's token authentication (read once per process, when ray loads; see ray_runtime).
os.environ.setdefault("RAY_AUTH_MODE", "token")
