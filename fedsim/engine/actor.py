"""The Ray actor that serves clients: one long-lived ClientApp per actor.

Flower's simulation engine re-creates the ClientApp for every message; here the
app (and, through the fedsim ClientApp's per-process cache, the model and the
memory-mapped client data) lives as long as the actor. A message's Context
travels with it (the grid owns the contexts), so any actor can serve any
client and results do not depend on which one does.

One call serves a batch of messages (a Ray call costs milliseconds of
scheduling and object-store traffic, as much as a small client's training). A
round's content is shipped once per call as pickled bytes and unpickled afresh
for every message, so each ClientApp call gets its own content, as under
Flower.
"""

from __future__ import annotations

import pickle
import time
import traceback

import ray
from flwr.app import Context, Error, Message, RecordDict
from flwr.app.metadata import Metadata
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedsim.engine.identity import set_identity

# (index into the call's contents, metadata, context) for each message of a batch.
BatchItem = tuple[int, Metadata, Context]


def error_reply(message: Message, reason: str, code: int) -> Message:
    """A Flower error reply to ``message`` (what a failed ClientApp yields)."""
    return Message(Error(code=code, reason=reason), reply_to=message)


def serve(app: ClientApp, content: RecordDict, metadata: Metadata, context: Context) -> Message:
    """Run ``app`` on one message; an exception becomes an error reply."""
    set_identity(metadata.run_id, metadata.dst_node_id)
    message = Message(content=content, metadata=metadata)  # type: ignore[call-overload]
    try:
        return app(message, context)
    except Exception as error:  # a client's failure is data, not a crash
        reason = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=5)}"
        return error_reply(message, reason, ErrorCode.CLIENT_APP_RAISED_EXCEPTION)


def serve_item(app: ClientApp, item: BatchItem, contents: tuple[bytes, ...]) -> Message:
    """Serve one message of a batch with its own copy of the content."""
    index, metadata, context = item
    return serve(app, pickle.loads(contents[index]), metadata, context)


@ray.remote
class ClientActor:
    """Runs a ClientApp on messages and returns the replies with the updated contexts."""

    def __init__(self, app: ClientApp, cpu_threads: int | None) -> None:
        if cpu_threads is not None:
            import torch

            torch.set_num_threads(cpu_threads)
        self.app = app

    def ready(self) -> bool:
        return True

    def run(
        self, content: RecordDict, metadata: Metadata, context: Context
    ) -> tuple[Message, Context]:
        return serve(self.app, content, metadata, context), context

    def run_batch(
        self, items: list[BatchItem], *contents: bytes
    ) -> tuple[list[tuple[Message, Context]], float]:
        """Serve ``items`` in order; returns (reply, context) pairs and the seconds spent."""
        started = time.perf_counter()
        results = [(serve_item(self.app, item, contents), item[2]) for item in items]
        return results, time.perf_counter() - started
