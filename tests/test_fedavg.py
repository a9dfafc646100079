"""FedAvg's three rules and server learning rate, pinned on hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedsim.strategies.fedavg import FedAvg, fedavg_weights
from tests.helpers import FixedGrid, arrays_of, reply_from

NODES = [11, 12, 13]
# Global x = [1, 2]; clients reply y = [3, 2], [1, 6], [0, 0] with 1, 3 and 4 examples.
CLIENT_ARRAYS = [[3.0, 2.0], [1.0, 6.0], [0.0, 0.0]]
EXAMPLES = [1.0, 3.0, 4.0]


def run_round(strategy: FedAvg, replying: list[int]) -> list[float]:
    messages = list(
        strategy.configure_train(1, arrays_of(w=[1.0, 2.0]), ConfigRecord(), FixedGrid(NODES))
    )
    assert [m.metadata.dst_node_id for m in messages] == NODES
    replies = [
        reply_from(m, arrays_of(w=CLIENT_ARRAYS[i]), EXAMPLES[i])
        for i, m in enumerate(messages)
        if i in replying
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    return arrays["w"].numpy().tolist()


def test_participating_rule_is_example_weighted_average(flower_identity: None) -> None:
    # (1*[3,2] + 3*[1,6] + 4*[0,0]) / 8 = [0.75, 2.5]
    assert run_round(FedAvg(), [0, 1, 2]) == pytest.approx([0.75, 2.5])


def test_server_lr_scales_the_mean_update(flower_identity: None) -> None:
    # x + 2 * ([0.75, 2.5] - [1, 2]) = [0.5, 3.0]
    assert run_round(FedAvg(server_lr=2.0), [0, 1, 2]) == pytest.approx([0.5, 3.0])


def test_uniform_weights(flower_identity: None) -> None:
    # mean of replies 0 and 1: [2, 4]
    assert run_round(FedAvg(uniform_weights=True), [0, 1]) == pytest.approx([2.0, 4.0])


def test_all_rule_divides_by_all_clients(flower_identity: None) -> None:
    # x + (1/4) * (([3,2]-[1,2]) + ([1,6]-[1,2])) = [1,2] + [0.5, 1.0]
    strategy = FedAvg(rule="all", num_clients=4)
    assert run_round(strategy, [0, 1]) == pytest.approx([1.5, 3.0])


def test_known_probability_rule(flower_identity: None) -> None:
    # p = 0.5 and 0.25, N = 4: weights 1/(4*0.5) = 0.5 and 1/(4*0.25) = 1
    # x + 0.5*[2,0] + 1*[0,4] = [2, 6]
    strategy = FedAvg(
        rule="known-probability",
        num_clients=4,
        participation_probabilities={11: 0.5, 12: 0.25, 13: 1.0},
    )
    assert run_round(strategy, [0, 1]) == pytest.approx([2.0, 6.0])
    assert strategy.client_metrics == {11: {"weight": 0.5}, 12: {"weight": 1.0}}


def test_no_replies_keeps_the_model(flower_identity: None) -> None:
    strategy = FedAvg()
    list(strategy.configure_train(1, arrays_of(w=[1.0]), ConfigRecord(), FixedGrid(NODES)))
    assert strategy.aggregate_train(1, []) == (None, None)


def test_weights_validation() -> None:
    with pytest.raises(ValueError, match="needs num_clients"):
        FedAvg(rule="all")
    with pytest.raises(ValueError, match="participation_probabilities"):
        FedAvg(rule="known-probability", num_clients=3)
    with pytest.raises(ValueError, match="rule must be one of"):
        FedAvg(rule="median")
    assert fedavg_weights("participating", np.zeros(0)).shape == (0,)


def test_sampling_is_seeded_and_a_subset(flower_identity: None) -> None:
    grid = FixedGrid(list(range(100, 120)))
    first = FedAvg(fraction_train=0.25, seed=5)
    second = FedAvg(fraction_train=0.25, seed=5)
    other = FedAvg(fraction_train=0.25, seed=6)

    def chosen(strategy: FedAvg) -> list[int]:
        messages = strategy.configure_train(3, arrays_of(w=[0.0]), ConfigRecord(), grid)
        return [m.metadata.dst_node_id for m in messages]

    assert chosen(first) == chosen(second)
    assert len(chosen(first)) == 5 and set(chosen(first)) <= set(grid.nodes)
    assert chosen(first) != chosen(other)
