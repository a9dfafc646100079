"""Shared fixtures: Flower's task identity, reply messages, one Ray runtime per session."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsim.engine.identity import set_identity


@pytest.fixture
def flower_identity() -> Iterator[None]:
    """Set Flower's process-wide TaskIdentity as a server, restore it afterwards."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    set_identity(run_id=7)
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def arrays_of(**named: list[float]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in named.items()})


def reply_from(instruction: Message, arrays: ArrayRecord, num_examples: float) -> Message:
    """The reply a ClientApp at ``instruction``'s destination would send."""
    content = RecordDict(
        {"arrays": arrays, "metrics": MetricRecord({"num-examples": num_examples})}
    )
    return Message(content, reply_to=instruction)


class FixedGrid:
    """Just enough of a Grid for configure_train: a fixed list of node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray runtime shared by every end-to-end test (starting one takes seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()
