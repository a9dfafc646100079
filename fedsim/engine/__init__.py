"""Execution engines: how messages from a strategy reach ClientApps and come back.

Both engines present Flower's ``Grid`` interface to the strategy, so any Flower
Message-API strategy runs unchanged: :mod:`fedsim.engine.ray_grid` is fedsim's
own (a pool of long-lived Ray actors), :mod:`fedsim.engine.flower_engine` runs
the same scenario through Flower's ``run_simulation`` for parity checks, and
:mod:`fedsim.engine.reachable` puts the participation pattern in front of
either.
"""
