"""Flower's records read, checked, averaged and built without Flower's per-item cost.

``RecordDict.array_records`` (and ``metric_records``, ``config_records``) builds a
new synchronised dict on every access, setting every entry twice through type
checks: at 50 replies a round, fedsim's own reads of them cost more than its
FedAvg arithmetic on CPU. These functions read the same records, in the same
order, straight from the ``RecordDict``; check replies and average their metrics as
Flower does, to the same errors and the same floats; and build the records of
fedsim's own replies without checking arrays that fedsim made.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies

R = TypeVar("R", ArrayRecord, MetricRecord, ConfigRecord)


def records_of(content: RecordDict, kind: type[R]) -> list[R]:
    """The records of ``kind`` in ``content``, in order (``content.<kind>_records.values()``).

    >>> content = RecordDict({"a": ArrayRecord(), "m": MetricRecord({"x": 1})})
    >>> [type(r).__name__ for r in records_of(content, MetricRecord)]
    ['MetricRecord']
    """
    return [record for record in content.values() if isinstance(record, kind)]


def array_record(arrays: Iterable[tuple[str, Array]]) -> ArrayRecord:
    """An ``ArrayRecord`` of ``arrays`` (name, Flower ``Array``) that fedsim made itself.

    ``ArrayRecord.__setitem__`` checks every key and value and marks the record dirty:
    about 6 µs an array, 3 ms a round for 50 replies of a 10-array model. fedsim's own
    arrays need no check, so they go into the record's dict directly (a record built
    otherwise, with the same content, compares equal).

    >>> import numpy as np
    >>> record = array_record([("w", Array(np.zeros(2, np.float32)))])
    >>> list(record), record == ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    (['w'], True)
    """
    record = ArrayRecord()
    record.__dict__["_data"].update(arrays)
    return record


def first_of(content: RecordDict, kind: type[R]) -> R:
    """The first record of ``kind`` in ``content`` (the one a fedsim or Flower reply has).

    >>> first_of(RecordDict({"m": MetricRecord({"x": 1})}), MetricRecord)["x"]
    1
    """
    for record in content.values():
        if isinstance(record, kind):
            return record
    raise KeyError(f"no {kind.__name__} in the message")


def check_reply_consistency(
    contents: list[RecordDict], weighted_by_key: str, *, check_arrays: bool
) -> None:
    """Flower's ``validate_message_reply_consistency`` (the same checks, the same
    ``InconsistentMessageReplies`` reasons), reading the records without its views:
    exactly one ArrayRecord (when ``check_arrays``) and one MetricRecord per reply,
    the same keys in every reply, and a single-valued ``weighted_by_key``."""
    if not contents:
        return
    if check_arrays:
        arrays = [records_of(content, ArrayRecord) for content in contents]
        if any(len(found) != 1 for found in arrays):
            raise InconsistentMessageReplies(
                reason="Expected exactly one ArrayRecord in replies. Skipping aggregation."
            )
        names = arrays[0][0].keys()
        if any(found[0].keys() != names for found in arrays[1:]):
            raise InconsistentMessageReplies(
                reason="All ArrayRecords must have the same keys for aggregation. "
                "This condition wasn't met. Skipping aggregation."
            )
    metrics = [records_of(content, MetricRecord) for content in contents]
    if any(len(found) != 1 for found in metrics):
        raise InconsistentMessageReplies(
            reason="Expected exactly one MetricRecord in replies, but found more. "
            "Skipping aggregation."
        )
    names = metrics[0][0].keys()
    if any(found[0].keys() != names for found in metrics[1:]):
        raise InconsistentMessageReplies(
            reason="All MetricRecords must have the same keys for aggregation. "
            "This condition wasn't met. Skipping aggregation."
        )
    if weighted_by_key not in names:
        raise InconsistentMessageReplies(
            reason=f"Missing required key `{weighted_by_key}` in the MetricRecord of "
            "reply messages. Cannot average ArrayRecords and MetricRecords. Skipping "
            "aggregation."
        )
    if any(isinstance(found[0][weighted_by_key], list) for found in metrics):
        raise InconsistentMessageReplies(
            reason=f"Key `{weighted_by_key}` in the MetricRecord of reply messages "
            "must be a single value (int or float), but a list was found. Skipping "
            "aggregation."
        )


def aggregate_metric_records(
    contents: list[RecordDict], weighting_metric_name: str
) -> MetricRecord:
    """Flower's ``aggregate_metricrecords`` (the default ``*_metrics_aggr_fn`` of its
    strategies), with the same arithmetic in the same order, reading the records
    without its views and building the result once.

    >>> replies = [RecordDict({"m": MetricRecord({"n": 1, "loss": 2.0, "h": [1.0, 0.0]})}),
    ...            RecordDict({"m": MetricRecord({"n": 3, "loss": 6.0, "h": [0.0, 1.0]})})]
    >>> dict(aggregate_metric_records(replies, "n"))
    {'loss': 5.0, 'h': [0.25, 0.75]}
    """
    metrics = [records_of(content, MetricRecord) for content in contents]
    weights = [float(found[0][weighting_metric_name]) for found in metrics]  # type: ignore[arg-type]
    total_weight = sum(weights)
    totals: dict[str, Any] = {}
    for found, weight in zip(metrics, (w / total_weight for w in weights), strict=True):
        for record in found:
            for key, value in record.items():
                if key == weighting_metric_name:
                    continue
                current = totals.get(key)
                if current is None:
                    totals[key] = (
                        [v * weight for v in value] if isinstance(value, list) else value * weight
                    )
                elif isinstance(value, list):
                    totals[key] = [c + v * weight for c, v in zip(current, value, strict=True)]
                else:
                    totals[key] = current + value * weight
    return MetricRecord(totals)
