"""What fedsim's engines share: Flower's ``Grid`` over simulated nodes with their Contexts.

A node is a client id behind a Flower node id (:mod:`fedsim.engine.identity`).
The grid owns every node's ``Context`` (partition id, persistent state), created
on first use so that idle nodes cost nothing, and hands it to whoever serves the
node's message; replies come back in the order the messages were sent, so
aggregation, and therefore the model, does not depend on who served what. How
messages are served is an engine's only job: :class:`~fedsim.engine.ray_grid.RayGrid`
on a pool of Ray actors, :class:`~fedsim.engine.inline_grid.InlineGrid` in the
driver process.

A round's content is pickled once however many nodes it goes to, and each
message is served with its own unpickled copy (as under Flower, where every
message is deserialised on its node), so a ClientApp that edits its message
cannot affect another's.
"""

from __future__ import annotations

import pickle
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedsim import keys
from fedsim.engine.identity import node_id_of
from fedsim.engine.serving import CohortPolicy, CohortTally

STAT_KEYS = (
    "dispatch_s",
    "wait_s",
    "collect_s",
    "actor_busy_s",
    "calls",
    "messages",
    "train_served",
    "cohort_train",
    "cohort_evaluate",
    "cohort_passes",
)


def pickled(content: RecordDict) -> bytes:
    """A message content as the bytes that travel to whoever serves the message."""
    return pickle.dumps(content, pickle.HIGHEST_PROTOCOL)


class NodeGrid(Grid):
    """A Flower Grid over ``num_clients`` simulated nodes; subclasses serve the messages.

    ``stats`` adds up where the driver's time went (see benchmarks/) and how many
    messages were served in cohorts; ``cohort_fallbacks`` counts, per reason, the
    messages that could have been and were served one at a time.
    """

    def __init__(
        self,
        *,
        num_clients: int,
        run_id: int = 1,
        run_config: dict[str, Any] | None = None,
        cohort: CohortPolicy | None = None,
    ) -> None:
        self._run = Run.create_empty(run_id)
        self.num_clients = num_clients
        self._run_config = dict(run_config or {})
        self.contexts: dict[int, Context] = {}
        self._replies: dict[str, Message] = {}
        self._pending: dict[str, Message] = {}
        self.stats: dict[str, float] = dict.fromkeys(STAT_KEYS, 0.0)
        self.cohort = cohort or CohortPolicy()
        self.cohort_fallbacks: Counter[str] = Counter()

    def _count(self, tally: CohortTally) -> None:
        """Add a served batch's cohort tally to ``stats`` and ``cohort_fallbacks``."""
        self.stats["train_served"] += tally.served["train"]
        self.stats["cohort_train"] += tally.messages["train"]
        self.stats["cohort_evaluate"] += tally.messages["evaluate"]
        self.stats["cohort_passes"] += tally.passes
        self.cohort_fallbacks.update(tally.fallbacks)

    def _dispatch(self, messages: list[Message], *, timeout: float | None) -> None:
        """Serve ``messages``, storing each reply under its message id in ``_replies``
        and each node's updated Context in ``contexts``; a message not answered within
        ``timeout`` seconds gets no reply (Flower's semantics)."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Release whatever serves the messages."""

    # --- Grid interface -------------------------------------------------------

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [node_id_of(client) for client in range(self.num_clients)]

    def client_of(self, node_id: int) -> int:
        return node_id - node_id_of(0)

    def context(self, node_id: int) -> Context:
        """The node's Context, created on first use (idle nodes cost nothing)."""
        if node_id not in self.contexts:
            client = self.client_of(node_id)
            if not 0 <= client < self.num_clients:
                raise ValueError(f"unknown node id {node_id}")
            self.contexts[node_id] = Context(
                run_id=self._run.run_id,
                node_id=node_id,
                node_config={keys.PARTITION_ID: client, keys.NUM_PARTITIONS: self.num_clients},
                state=RecordDict(),
                run_config=dict(self._run_config),
            )
        return self.contexts[node_id]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = uuid.uuid4().hex
            message.metadata.__dict__["_message_id"] = message_id
            self._pending[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Runs whatever is pending, then returns the replies to ``message_ids``."""
        if self._pending:
            self._dispatch(list(self._pending.values()), timeout=None)
            self._pending.clear()
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        message_list = list(messages)
        ids = list(self.push_messages(message_list))
        self._pending.clear()
        self._dispatch(message_list, timeout=timeout)
        return [self._replies.pop(i) for i in ids if i in self._replies]
