"""Shared fixtures: Flower's task identity, one Ray runtime per session.

Plain helper functions that several test modules share are in tests/helpers.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

# Ray reads these once per process, when it is first imported: the suite's own Ray
# runtime gets what fedsim gives a local run (token authentication, loopback only).
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

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
    from fedsim.engine.ray_runtime import local_ray

    with local_ray("tests", num_cpus=2):
        yield
