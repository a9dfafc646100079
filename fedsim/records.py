"""Reading a Flower ``RecordDict`` by record type without Flower's copying views.

``RecordDict.array_records`` (and ``metric_records``, ``config_records``) builds a
new synchronised dict on every access, setting every entry twice through type
checks: at 50 replies a round, fedsim's own reads of them cost more than its
FedAvg arithmetic on CPU. These functions read the same records, in the same
order, straight from the ``RecordDict``.
"""

from __future__ import annotations

from typing import TypeVar

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

R = TypeVar("R", ArrayRecord, MetricRecord, ConfigRecord)


def records_of(content: RecordDict, kind: type[R]) -> list[R]:
    """The records of ``kind`` in ``content``, in order (``content.<kind>_records.values()``).

    >>> content = RecordDict({"a": ArrayRecord(), "m": MetricRecord({"x": 1})})
    >>> [type(r).__name__ for r in records_of(content, MetricRecord)]
    ['MetricRecord']
    """
    return [record for record in content.values() if isinstance(record, kind)]


def first_of(content: RecordDict, kind: type[R]) -> R:
    """The first record of ``kind`` in ``content`` (the one a fedsim or Flower reply has).

    >>> first_of(RecordDict({"m": MetricRecord({"x": 1})}), MetricRecord)["x"]
    1
    """
    for record in content.values():
        if isinstance(record, kind):
            return record
    raise KeyError(f"no {kind.__name__} in the message")
