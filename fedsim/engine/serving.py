"""Serving messages: what a worker does with a batch of them, whichever engine it runs in.

The Ray actors (:mod:`fedsim.engine.actor`) and the inline engine
(:mod:`fedsim.engine.inline_grid`) serve messages through these functions, so a
ClientApp sees the same thing in both and their results are identical. Kept
apart from the actor so that the inline engine does not import Ray.

Cohorts: when the app offers them (fedsim's own ClientApp does, a user's does
not) and ``engine.cohort`` is on, consecutive train (or evaluate) messages of a
batch for distinct nodes are handed to the app together, up to the size it says
fits, and trained as one stacked model. Each still gets its own reply. Should a
cohort raise, its messages are served again one at a time, so that each
failure is answered as its own error reply, exactly as without cohorts.
"""

from __future__ import annotations

import math
import pickle
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.app.metadata import Metadata
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedsim.engine.identity import set_identity

# (index into the call's contents, metadata, context) for each message of a batch.
BatchItem = tuple[int, Metadata, Context]


@dataclass(frozen=True)
class CohortPolicy:
    """``engine.cohort`` and ``engine.cohort_memory_mb``: whether and how large cohorts are.

    >>> CohortPolicy("off").enabled, CohortPolicy(8).max_clients, CohortPolicy().max_clients
    (False, 8, None)
    """

    mode: str | int = "auto"
    memory_mb: float | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def max_clients(self) -> int | None:
        return self.mode if isinstance(self.mode, int) else None


@dataclass
class CohortTally:
    """What a batch's cohorts did: messages served (by message type), those served in
    cohorts, cohort passes, and why messages that could not be were served one at a time."""

    served: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)
    passes: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)


def split_evenly(count: int, capacity: int) -> list[int]:
    """Sizes of the fewest cohorts of at most ``capacity`` holding ``count`` clients, as
    equal as possible (larger first).

    >>> split_evenly(10, 4), split_evenly(8, 8), split_evenly(0, 3)
    ([4, 3, 3], [8], [])
    """
    parts = math.ceil(count / capacity) if count else 0
    if not parts:
        return []
    size, larger = divmod(count, parts)
    return [size + 1] * larger + [size] * (parts - larger)


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


def serve_batch(
    app: ClientApp,
    items: list[BatchItem],
    contents: tuple[bytes, ...],
    policy: CohortPolicy,
    *,
    deadline: float | None = None,
) -> tuple[list[Message | None], CohortTally]:
    """Serve ``items`` in order, in cohorts where the app and ``policy`` allow.

    ``deadline`` (``time.monotonic()``): nothing starts after it, and the replies of
    work that ends after it are dropped (None), as Flower drops late replies; the
    Contexts keep what the work did.
    """
    replies: list[Message | None] = [None] * len(items)
    tally = CohortTally()
    for unit in _units(app, items, policy, tally):
        if deadline is not None and time.monotonic() > deadline:
            break
        served = _serve_unit(app, [items[i] for i in unit], contents, tally)
        tally.served[items[unit[0]][1].message_type] += len(unit)
        if deadline is None or time.monotonic() <= deadline:
            for i, reply in zip(unit, served, strict=True):
                replies[i] = reply
    return replies, tally


def _units(
    app: ClientApp, items: list[BatchItem], policy: CohortPolicy, tally: CohortTally
) -> list[list[int]]:
    """The batch as units of work: runs of same-type messages for distinct nodes, each
    split into cohorts as even as the app's limit allows; single messages otherwise."""
    limit_of = getattr(app, "cohort_limit", None) if policy.enabled else None
    limits: dict[str, tuple[int, str | None]] = {}

    def limit(message_type: str) -> tuple[int, str | None]:
        if limit_of is None or message_type not in (MessageType.TRAIN, MessageType.EVALUATE):
            return 1, None
        if message_type not in limits:
            limits[message_type] = limit_of(
                message_type, max_clients=policy.max_clients, memory_mb=policy.memory_mb
            )
        return limits[message_type]

    runs: list[list[int]] = []
    for i, (_, metadata, _) in enumerate(items):
        run = runs[-1] if runs else None
        if (
            run is not None
            and items[run[0]][1].message_type == metadata.message_type
            and all(items[j][1].dst_node_id != metadata.dst_node_id for j in run)
        ):
            run.append(i)
        else:
            runs.append([i])
    units: list[list[int]] = []
    for run in runs:
        size, reason = limit(items[run[0]][1].message_type) if len(run) > 1 else (1, None)
        if reason is not None:
            tally.fallbacks[reason] += len(run)
        start = 0
        for part in split_evenly(len(run), size):
            units.append(run[start : start + part])
            start += part
    return units


def _serve_unit(
    app: ClientApp, unit: list[BatchItem], contents: tuple[bytes, ...], tally: CohortTally
) -> list[Message]:
    if len(unit) == 1:
        return [serve_item(app, unit[0], contents)]
    messages, contexts = [], []
    # One copy of each distinct content for the whole cohort: the app's cohort code only
    # reads it (a ClientApp that edits its message is served one message at a time).
    loaded: dict[int, RecordDict] = {}
    for index, metadata, context in unit:
        set_identity(metadata.run_id, metadata.dst_node_id)
        if index not in loaded:
            loaded[index] = pickle.loads(contents[index])
        messages.append(Message(content=loaded[index], metadata=metadata))  # type: ignore[call-overload]
        contexts.append(context)
    try:
        replies: list[Message] = app.serve_cohort(messages, contexts)  # type: ignore[attr-defined]
    except Exception as error:  # served again one by one: each failure gets its own reply
        tally.fallbacks[f"a cohort raised {type(error).__name__}: {error}"[:300]] += len(unit)
        return [serve_item(app, item, contents) for item in unit]
    tally.messages[unit[0][1].message_type] += len(unit)
    tally.passes += 1
    return replies
