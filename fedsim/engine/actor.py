"""The Ray actor that serves clients: one long-lived ClientApp per actor.

Flower's simulation engine re-creates the ClientApp for every message; here the
app (and, through the fedsim ClientApp's per-process cache, the model and the
memory-mapped client data) lives as long as the actor. A message's Context
travels with it (the grid owns the contexts), so any actor can serve any
client and results do not depend on which one does.

One call serves a batch of messages (a Ray call costs milliseconds of
scheduling and object-store traffic, as much as a small client's training),
as cohorts where the app and ``engine.cohort`` allow (:mod:`fedsim.engine.serving`). A
round's content is shipped once per call as pickled bytes and unpickled afresh
for every message, so each ClientApp call gets its own content, as under
Flower. On the driver's machine the call and its replies go through the actor's
shared-memory mailbox (:mod:`fedsim.engine.mailbox`) instead of Ray's object store.
"""

from __future__ import annotations

import time
from typing import Any

import ray
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedsim.engine.mailbox import Mailbox, Span
from fedsim.engine.serving import BatchItem, CohortPolicy, CohortTally, serve_batch


@ray.remote
class ClientActor:
    """Runs a ClientApp on messages and returns the replies with the updated contexts."""

    def __init__(
        self,
        app: ClientApp,
        cpu_threads: int | None,
        cohort: CohortPolicy | None = None,
        mailbox: str | None = None,
    ) -> None:
        if cpu_threads is not None:
            import torch

            torch.set_num_threads(cpu_threads)
        self.app = app
        self.cohort = cohort or CohortPolicy()
        self.mailbox = Mailbox.attach(mailbox) if mailbox else None

    def ready(self) -> bool:
        """Started; True when the actor opened its mailbox (it shares the driver's machine)."""
        return self.mailbox is not None

    def run_mailed_batch(self, spans: list[Span]) -> Any:
        """:meth:`run_batch` with its arguments and its result in the mailbox (the result
        through Ray should the mailbox not have room for it)."""
        if self.mailbox is None:
            raise RuntimeError("this actor has no mailbox")
        items, contents = self.mailbox.unpack(spans)
        return self.mailbox.pack_or_pass(self.run_batch(items, *contents))

    def run_batch(
        self, items: list[BatchItem], *contents: bytes
    ) -> tuple[list[tuple[Message, Context]], float, CohortTally]:
        """Serve ``items`` in order (in cohorts where allowed); returns (reply, context)
        pairs, the seconds spent and what the cohorts did."""
        started = time.perf_counter()
        replies, tally = serve_batch(self.app, items, contents, self.cohort)
        results = []
        for reply, item in zip(replies, items, strict=True):
            assert reply is not None  # only a deadline leaves a message unanswered
            results.append((reply, item[2]))
        return results, time.perf_counter() - started, tally
