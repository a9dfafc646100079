"""Serving one message: what a worker does with it, whichever engine it runs in.

The Ray actors (:mod:`fedsim.engine.actor`) and the inline engine
(:mod:`fedsim.engine.inline_grid`) serve messages through these functions, so a
ClientApp sees the same thing in both and their results are identical. Kept
apart from the actor so that the inline engine does not import Ray.
"""

from __future__ import annotations

import pickle
import traceback

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
