"""The Ray actor that serves clients: one long-lived ClientApp per actor.

Flower's simulation engine re-creates the ClientApp for every message; here the
app (and, through the fedsim ClientApp's per-process cache, the model and the
memory-mapped client data) lives as long as the actor. A message's Context
travels with it (the grid owns the contexts), so any actor can serve any
client and results do not depend on which one does.
"""

from __future__ import annotations

import traceback

import ray
from flwr.app import Context, Error, Message, RecordDict
from flwr.app.metadata import Metadata
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedsim.engine.identity import set_identity


def error_reply(message: Message, reason: str, code: int) -> Message:
    """A Flower error reply to ``message`` (what a failed ClientApp yields)."""
    return Message(Error(code=code, reason=reason), reply_to=message)


@ray.remote
class ClientActor:
    """Runs a ClientApp on messages; ``run`` returns the reply and the updated context."""

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
        set_identity(metadata.run_id, metadata.dst_node_id)
        message = Message(content=content, metadata=metadata)  # type: ignore[call-overload]
        try:
            reply = self.app(message, context)
        except Exception as error:  # a client's failure is data, not a crash
            reason = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=5)}"
            reply = error_reply(message, reason, ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
        return reply, context
