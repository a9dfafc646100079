"""The participation pattern in front of a Grid: only reachable nodes exist this round.

Participation belongs to the simulated environment, not to the strategy, so it
is enforced here, below any strategy: ``get_node_ids`` lists only the nodes the
pattern makes reachable in the current round, exactly as real Flower nodes come
and go, and in-round faults (a selected client dropping out, a straggler
missing the deadline) remove replies before the strategy sees them: a dropped
client never trains, a straggler trains and its reply is discarded. Every
message and its fate is logged per (round, client) for ``participation.parquet``.

With a system model (a ``[system]`` table) the grid also keeps the virtual clock:
it notes the bytes of every train message it delivers, and when the replies
come back it gives each client-round its simulated duration (download, compute,
upload, latency), closes the round (:func:`fedsim.system.close_round`: replies
after the deadline, or after the ``keep_first``-th, are late and discarded like
any late reply) and advances the clock by the round's duration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedsim import keys
from fedsim.errors import RunError
from fedsim.records import records_of
from fedsim.results import RoundLog
from fedsim.system import ClientTime, SystemModel, VirtualClock, close_round, payload_bytes

# Flower's sample_nodes re-asks get_node_ids once a second while too few nodes are
# connected; within a round nothing changes, so repeated asking means it would wait forever.
MAX_REPEATED_NODE_QUERIES = 5


class ReachableGrid(Grid):
    """Wraps a Grid; ``begin_round`` sets which clients are reachable."""

    def __init__(
        self,
        inner: Grid,
        *,
        node_of_client: dict[int, int],
        reachable: Callable[[int], np.ndarray],
        faults: object | None = None,
        system: SystemModel | None = None,
        start_time: float = 0.0,
        reachable_at: Callable[[int, float], np.ndarray] | None = None,
    ) -> None:
        self.inner = inner
        self.node_of_client = node_of_client
        self.client_of_node = {node: client for client, node in node_of_client.items()}
        self._reachable = reachable
        self.faults = faults
        self.system = system
        # A time-driven pattern: who is reachable at the round's simulated start.
        self._reachable_at = reachable_at if system is not None else None
        self.clock = VirtualClock(start_time)
        self._down_bytes: dict[int, int] = {}
        self._timed = False
        self.asynchronous = False  # set by the asynchronous loop: it keeps the clock itself
        self.last_times: dict[int, ClientTime] = {}
        self.round = 0
        self.log = RoundLog(available=np.zeros(0, np.int64))
        self._node_queries = 0

    def begin_round(self, server_round: int) -> RoundLog:
        self.round = server_round
        available = (
            self._reachable_at(server_round, self.clock.now)
            if self._reachable_at is not None
            else self._reachable(server_round)
        )
        self.log = RoundLog(available=np.asarray(available, dtype=np.int64))
        if self.system is not None:
            self.log.span = (self.clock.now, self.clock.now)
            self._down_bytes = {}
            self._timed = False
        self._nodes = [self.node_of_client[int(c)] for c in self.log.available]
        self._node_queries = 0
        return self.log

    # --- Grid interface (delegated) -----------------------------------------

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        self._node_queries += 1
        if self._node_queries > MAX_REPEATED_NODE_QUERIES:
            raise RunError(
                f"round {self.round}: the strategy keeps waiting for more nodes than the "
                f"{len(self._nodes)} reachable ones; set its min_*_nodes options to 0"
            )
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(self._admit(list(messages)))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._note_replies(self.inner.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        admitted = self._admit(list(messages))
        return self._note_replies(self.inner.send_and_receive(admitted, timeout=timeout))

    # --- participation --------------------------------------------------------

    def _admit(self, messages: list[Message]) -> list[Message]:
        """Messages to unreachable nodes are refused; faults may swallow train replies."""
        self._node_queries = 0
        reachable = set(self._nodes)
        for message in messages:
            if message.metadata.dst_node_id not in reachable:
                raise RunError(
                    f"round {self.round}: the strategy sent a message to node "
                    f"{message.metadata.dst_node_id}, which is not reachable in this round"
                )
        train = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        clients = np.array([self.client_of_node[m.metadata.dst_node_id] for m in train], np.int64)
        self.log.selected.update(int(c) for c in clients)
        if self.system is not None:
            for message, client in zip(train, clients, strict=True):
                self._down_bytes[int(client)] = payload_bytes(message.content)
        if self.faults is None or not len(clients):
            return messages
        outcome = self.faults.outcome(self.round, clients)  # type: ignore[attr-defined]
        dropped = set()
        for client, is_dropped, is_late, latency in zip(
            clients, outcome.dropped, outcome.late, outcome.latency, strict=True
        ):
            if is_dropped:  # gone after selection: it never trains, nothing comes back
                self.log.dropped.add(int(client))
                dropped.add(int(client))
            elif is_late:  # a straggler trains, but its reply misses the deadline
                self.log.late[int(client)] = float(latency)
        return [
            m
            for m in messages
            if m.metadata.message_type != MessageType.TRAIN
            or self.client_of_node[m.metadata.dst_node_id] not in dropped
        ]

    def _note_replies(self, replies: Iterable[Message]) -> list[Message]:
        # Replies in client order, whatever order they arrived in: the aggregate's
        # floating-point sums then do not depend on the engine or on scheduling.
        replies = sorted(replies, key=lambda reply: self.client_of_node[reply.metadata.src_node_id])
        if self.system is not None:
            self._tick([r for r in replies if r.metadata.message_type == MessageType.TRAIN])
        on_time = []
        for reply in replies:
            if reply.metadata.message_type != MessageType.TRAIN:
                on_time.append(reply)
                continue
            client = self.client_of_node[reply.metadata.src_node_id]
            if client in self.log.late:
                continue  # discarded: the strategy never sees a late reply
            on_time.append(reply)
            if reply.has_error():
                self.log.failed[client] = reply.error.reason or "unknown error"
            else:
                self.log.replied.add(client)
        return on_time

    # --- simulated time --------------------------------------------------------

    def _tick(self, replies: list[Message]) -> None:
        """Time the round's train replies, mark the late ones, advance the clock.

        In an asynchronous run (``asynchronous`` set by its loop) the times are only
        kept in ``last_times``: that loop decides when each reply arrives."""
        if not replies:
            return
        system = self.system
        assert system is not None
        self.last_times = {}
        for reply in replies:
            if reply.has_error():
                continue  # a failure is recorded as such; it does not hold the round up
            client = self.client_of_node[reply.metadata.src_node_id]
            self.last_times[client] = system.client_time(
                self.round,
                client,
                down_bytes=self._down_bytes.get(client, 0),
                up_bytes=payload_bytes(reply.content),
                replied_examples=_num_examples(reply),
            )
        if self.asynchronous:
            return
        arrivals: dict[int, float] = {}
        for client, time in self.last_times.items():
            self.log.times[client] = (time.download, time.compute, time.upload, time.latency)
            arrivals[client] = time.total
        close = close_round(
            arrivals,
            deadline=system.deadline,
            keep_first=system.keep_first,
            missing=bool(self.log.dropped),
        )
        for client in close.late:
            self.log.late[client] = arrivals[client]
        self._advance(close.duration)

    def end_train(self) -> None:
        """After the round's train exchange: a round without a train reply still takes
        time (the deadline when clients were asked and none answered, else
        ``system.idle_round``), so a round where nobody is reachable moves the day on."""
        if self.system is None or self._timed:
            return
        deadline = self.system.deadline
        self._advance(deadline if self.log.selected and deadline else self.system.idle_round)

    def _advance(self, duration: float) -> None:
        self._timed = True
        start, _ = self.log.span or (self.clock.now, self.clock.now)
        self.clock.advance(duration)
        self.log.span = (start, self.clock.now)


def _num_examples(reply: Message) -> int | None:
    for record in records_of(reply.content, MetricRecord):
        value = record.get(keys.NUM_EXAMPLES)
        if isinstance(value, int | float):
            return int(value)
    return None
