"""Shared fixtures: Flower's task identity, one Ray runtime per session.

Plain helper functions that several test modules share are in tests/helpers.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedsim.engine.identity import set_identity


@pytest.fixture
def flower_identity() -> Iterator[None]:
    """Set Flower's process-wide TaskIdentity as a server, restore it afterwards."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    set_identity(run_id=7)
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray runtime shared by every end-to-end test (starting one takes seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()
