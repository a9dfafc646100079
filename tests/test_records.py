"""fedsim.records reads a RecordDict's records exactly as Flower's views do, checks
reply consistency with the very errors of Flower's own check, and averages metrics to
the very floats of Flower's own average."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy.strategy_utils import (
    aggregate_metricrecords,
    validate_message_reply_consistency,
)

from fedsim.records import aggregate_metric_records, check_reply_consistency, first_of, records_of
from fedsim.strategies.fedavg import FedAvg


def reply(arrays: dict[str, float] | None = None, **metrics: object) -> RecordDict:
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(np.array([v])) for k, v in arrays.items()})
    content["metrics"] = MetricRecord(metrics)  # type: ignore[arg-type]
    content["config"] = ConfigRecord({"x": 1})
    return content


def test_records_come_in_the_order_and_of_the_kind_flowers_views_give() -> None:
    content = reply({"w": 1.0}, n=3)
    content["more"] = MetricRecord({"n": 4})
    for kind, view in (
        (ArrayRecord, content.array_records),
        (MetricRecord, content.metric_records),
        (ConfigRecord, content.config_records),
    ):
        assert records_of(content, kind) == list(view.values())
    assert first_of(content, MetricRecord)["n"] == 3
    with pytest.raises(KeyError, match="no ArrayRecord"):
        first_of(reply(None, n=1), ArrayRecord)


CASES = {
    "consistent": [reply({"w": 1.0}, n=1), reply({"w": 2.0}, n=2)],
    "two array records": [reply({"w": 1.0}, n=1), reply({"w": 2.0}, n=2)],
    "different array keys": [reply({"w": 1.0}, n=1), reply({"v": 2.0}, n=2)],
    "different metric keys": [reply({"w": 1.0}, n=1), reply({"w": 2.0}, m=2)],
    "no weight key": [reply({"w": 1.0}, m=1), reply({"w": 2.0}, m=2)],
    "a list as weight": [reply({"w": 1.0}, n=[1]), reply({"w": 2.0}, n=[2])],
    "no arrays": [reply(None, n=1), reply(None, n=2)],
}
CASES["two array records"][1]["extra"] = ArrayRecord({"w": Array(np.array([0.0]))})
CASES["two metric records"] = [reply({"w": 1.0}, n=1), reply({"w": 2.0}, n=2)]
CASES["two metric records"][0]["more"] = MetricRecord({"n": 1})


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("check_arrays", [True, False])
def test_consistency_errors_are_flowers(case: str, check_arrays: bool) -> None:
    contents = CASES[case]

    def outcome(check: object) -> str:
        try:
            check()  # type: ignore[operator]
        except InconsistentMessageReplies as error:
            return str(error)
        return "ok"

    ours = outcome(lambda: check_reply_consistency(contents, "n", check_arrays=check_arrays))
    flowers = outcome(
        lambda: validate_message_reply_consistency(contents, "n", check_arrayrecord=check_arrays)
    )
    assert ours == flowers
    assert (ours == "ok") == (case == "consistent" or (not check_arrays and "array" in case))


def test_metric_average_is_flowers_to_the_last_bit() -> None:
    generator = np.random.default_rng(0)
    contents = [
        reply(
            None,
            num_examples=int(generator.integers(1, 90)),
            loss=float(generator.random()),
            correct=int(generator.integers(0, 9)),
            curve=[float(v) for v in generator.random(3)],
        )
        for _ in range(37)
    ]
    ours = aggregate_metric_records(contents, "num_examples")
    flowers = aggregate_metricrecords(contents, "num_examples")
    assert list(ours.items()) == list(flowers.items())  # same keys, order and floats
    assert set(ours) == {"loss", "correct", "curve"}


def test_strategies_use_it_in_place_of_flowers_default_only() -> None:
    assert FedAvg().train_metrics_aggr_fn is aggregate_metric_records
    assert FedAvg().evaluate_metrics_aggr_fn is aggregate_metric_records

    def mine(contents: list[RecordDict], key: str) -> MetricRecord:
        return MetricRecord({"k": 1})

    assert FedAvg(train_metrics_aggr_fn=mine).train_metrics_aggr_fn is mine
