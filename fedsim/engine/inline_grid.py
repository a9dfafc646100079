"""The inline engine: every message served in the driver process, one after the other.

With one worker on one machine, Ray buys nothing but costs a few milliseconds of
scheduling and object-store traffic per call, and a few seconds to start:
``engine.kind = "inline"`` serves the same ClientApp through the same code
(:func:`fedsim.engine.serving.serve_batch`: a fresh copy of the content per
message, the node's Context from the grid, cohorts where allowed) in the
driver itself, so with cohorts off its results are those of the Ray engine,
bit for bit. On one GPU it is the fast path: one process owns the device and
trains each round's clients as cohorts. It is also the engine to debug a
ClientApp with: breakpoints and profilers see the client code.

What it gives up is isolation: a client that crashes the process (a segfault,
the out-of-memory killer) ends the run, which resumes from its last checkpoint
with ``fedsim resume``; and a running client cannot be interrupted, so
``engine.timeout`` is applied between messages (and cohorts): once it has
passed, the message or cohort that overran and every one not yet started get
no reply (Flower's semantics for late messages). The message that overran did run to its end, so
its node's Context keeps what it did, as a real device that answered too late
would (the Ray engine kills the actor instead, and the Context stays as it was).
"""

from __future__ import annotations

import time
from typing import Any

from flwr.app import Message
from flwr.clientapp import ClientApp

from fedsim.engine.identity import set_identity
from fedsim.engine.node_grid import NodeGrid, pickled
from fedsim.engine.serving import BatchItem, CohortPolicy, serve_batch


class InlineGrid(NodeGrid):
    """A Flower Grid whose nodes are served in this process.

    >>> # grid = InlineGrid(app, num_clients=10)
    >>> # replies = grid.send_and_receive(strategy.configure_train(1, arrays, cfg, grid))
    """

    def __init__(
        self,
        app: ClientApp,
        *,
        num_clients: int,
        run_id: int = 1,
        run_config: dict[str, Any] | None = None,
        cohort: CohortPolicy | None = None,
    ) -> None:
        super().__init__(
            num_clients=num_clients, run_id=run_id, run_config=run_config, cohort=cohort
        )
        self.app = app
        set_identity(run_id)

    def _dispatch(self, messages: list[Message], *, timeout: float | None) -> None:
        started = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        contents: list[bytes] = []
        slot: dict[int, int] = {}
        items: list[BatchItem] = []
        for message in messages:
            key = id(message.content)
            if key not in slot:
                slot[key] = len(contents)
                contents.append(pickled(message.content))
            node_id = message.metadata.dst_node_id
            items.append((slot[key], message.metadata, self.context(node_id)))
        try:
            replies, tally = serve_batch(
                self.app, items, tuple(contents), self.cohort, deadline=deadline
            )
        finally:
            set_identity(self._run.run_id)  # serving set this process's identity to a node's
        for message, reply in zip(messages, replies, strict=True):
            if reply is not None:
                self._replies[message.metadata.message_id] = reply
        self._count(tally)
        self.stats["actor_busy_s"] += time.perf_counter() - started
        self.stats["calls"] += 1
        self.stats["messages"] += len(messages)
