"""Flower's process-wide task identity, and fedsim's node ids.

Flower's ``Message`` constructor reads ``TaskIdentity`` (run id, node id, task
id), which Flower's own runtimes set; fedsim sets it in the driver and, per
call, in each actor. In fedsim's engine the node id of client ``c`` is
``NODE_ID_BASE + c``: readable, and clear of the ids Flower reserves (0 and
the SuperLink's 1).
"""

from __future__ import annotations

from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

NODE_ID_BASE = 1_000_000


def node_id_of(client: int) -> int:
    """The Flower node id that serves client ``client`` in fedsim's engine.

    >>> node_id_of(3)
    1000003
    """
    return NODE_ID_BASE + client


def set_identity(run_id: int, node_id: int = SUPERLINK_NODE_ID, task_id: int = 1) -> None:
    """Make this process look like a Flower runtime for ``node_id``."""
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id
    TaskIdentity.task_id = task_id
