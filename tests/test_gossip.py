"""Decentralised strategies: mixing matrices, and full Flower-message rounds with down nodes."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid

from fedsim.errors import ScenarioError
from fedsim.strategies.gossip import (
    DPSGD,
    DecentralizedStrategy,
    Gossip,
    VarianceCorrectedGossip,
    gossip_matrix,
    metropolis_hastings_matrix,
    mix,
    received_matrix,
    xavier_init_,
)
from fedsim.strategies.variance_correction import Segments, corrected_average
from fedsim.topology import TopologySpec, adjacency
from tests.helpers import FixedGrid, arrays_of, reply_from

NODES = [101, 102, 103, 104]  # vertices 0..3 of a ring 0-1-2-3-0
# Round 1: node 104 (vertex 3) is down; the others reply these trained models.
TRAINED = {101: [2.0, 0.0], 102: [0.0, 4.0], 103: [4.0, 2.0]}


def grid_of(nodes: list[int]) -> Grid:
    """conftest's FixedGrid, typed as the Grid it stands in for."""
    return cast(Grid, FixedGrid(nodes))


def ring_strategy(cls: type[DecentralizedStrategy], **options: Any) -> Any:
    return cls(num_clients=4, node_ids=NODES, topology="ring", init="shared", **options)


def replies_for(messages: list[Message], trained: dict[int, list[float]]) -> list[Message]:
    return [
        reply_from(m, arrays_of(w=trained[m.metadata.dst_node_id]), 10.0)
        for m in messages
        if m.metadata.dst_node_id in trained
    ]


def run_round(
    strategy: Any, reachable: list[int], trained: dict[int, list[float]], rnd: int = 1
) -> tuple[list[list[float]], MetricRecord, ArrayRecord]:
    messages = list(
        strategy.configure_train(rnd, arrays_of(w=[0.0, 0.0]), ConfigRecord(), grid_of(reachable))
    )
    assert [m.metadata.dst_node_id for m in messages] == reachable
    arrays, metrics = strategy.aggregate_train(rnd, replies_for(messages, trained))
    assert arrays is not None and metrics is not None
    return strategy.models.tolist(), metrics, arrays


# --- mixing matrices ----------------------------------------------------------------


def test_metropolis_hastings_on_a_star() -> None:
    # Star with centre 0 and leaves 1..3: d = [3, 1, 1, 1], so W_0j = 1/(1 + 3) = 1/4.
    star = adjacency_of(TopologySpec("star", 4))
    w = metropolis_hastings_matrix(star, star)
    expected = [[0.25] * 4] + [[0.25 if j in (0, i) else 0.0 for j in range(4)] for i in (1, 2, 3)]
    expected[1][1] = expected[2][2] = expected[3][3] = 0.75
    assert np.allclose(w.numpy(), expected)
    assert torch.allclose(w.sum(dim=1), torch.ones(4))
    assert torch.equal(w, w.T)


def test_metropolis_hastings_with_a_down_neighbour_keeps_symmetry() -> None:
    ring = adjacency_of(TopologySpec("random-regular", 10, degree=3, seed=2))
    up = torch.tensor([True] * 7 + [False] * 3)
    w = metropolis_hastings_matrix(ring, received_matrix(ring, up))
    assert torch.allclose(w.sum(dim=1), torch.ones(10))
    assert torch.equal(w, w.T)
    assert torch.equal(w[7:], torch.eye(10)[7:])  # down nodes keep their model
    assert torch.allclose(w[:7].sum(dim=0)[:7], torch.ones(7))  # the up nodes' mean is kept
    # Every off-diagonal weight is 1/(1 + 3) on an arrived edge and 0 elsewhere.
    off = w - torch.diag(torch.diagonal(w))
    assert set(off[off > 0].tolist()) == {0.25}


def test_gossip_matrix_rows() -> None:
    received = torch.tensor([[0, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    assert gossip_matrix(received, 0.0).tolist() == [[0, 0.5, 0.5], [1, 0, 0], [0, 0, 1]]
    assert gossip_matrix(received, 0.5).tolist() == [
        [0.5, 0.25, 0.25],
        [0.5, 0.5, 0.0],
        [0.0, 0.0, 1.0],
    ]


def test_sparse_mixing_equals_dense() -> None:
    n = 100
    ring = adjacency_of(TopologySpec("ring", n))
    matrix = metropolis_hastings_matrix(ring, ring)
    models = torch.randn((n, 7), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mix(matrix, models), matrix @ models, atol=1e-6)


def adjacency_of(spec: TopologySpec) -> torch.Tensor:
    return adjacency(spec.graph(), spec.num_nodes)


# --- full rounds through Flower messages ---------------------------------------------


def test_gossip_round_with_a_down_node(flower_identity: None) -> None:
    strategy = ring_strategy(Gossip)
    models, metrics, arrays = run_round(strategy, [101, 102, 103], TRAINED)
    # Vertex 0 receives only from 1 (3 is down), 1 from 0 and 2, 2 only from 1; 3 unchanged.
    assert models == [[0.0, 4.0], [3.0, 1.0], [0.0, 4.0], [0.0, 0.0]]
    assert arrays["w"].numpy().tolist() == pytest.approx([0.75, 2.25])  # the consensus model
    distances = [math.hypot(-0.75, 1.75), math.hypot(2.25, -1.25)]
    distances += [math.hypot(-0.75, 1.75), math.hypot(-0.75, -2.25)]
    assert metrics["consensus_distance"] == pytest.approx(sum(distances) / 4)
    assert metrics["merged_nodes"] == 3
    assert strategy.client_metrics == {
        101: {"received": 1.0},
        102: {"received": 2.0},
        103: {"received": 1.0},
    }
    # Round 2: every node, 104 included, is sent its own model.
    messages = strategy.configure_train(2, arrays_of(w=[9.0, 9.0]), ConfigRecord(), grid_of(NODES))
    sent = {m.metadata.dst_node_id: m.content["arrays"]["w"].numpy().tolist() for m in messages}
    assert sent == {101: [0.0, 4.0], 102: [3.0, 1.0], 103: [0.0, 4.0], 104: [0.0, 0.0]}
    assert all(m.metadata.message_type == MessageType.TRAIN for m in messages)


def test_conservative_gossip_round(flower_identity: None) -> None:
    models, _, _ = run_round(ring_strategy(Gossip, beta=0.5), [101, 102, 103], TRAINED)
    assert models == [[1.0, 2.0], [1.5, 2.5], [2.0, 3.0], [0.0, 0.0]]


def test_dpsgd_round_moves_down_weight_to_self(flower_identity: None) -> None:
    # Ring degrees are 2, so W_ij = 1/3; vertex 0 and 2 lose neighbour 3: W_ii = 2/3.
    models, _, _ = run_round(ring_strategy(DPSGD), [101, 102, 103], TRAINED)
    third = 1 / 3
    expected = [[4 * third, 4 * third], [2.0, 2.0], [8 * third, 8 * third], [0.0, 0.0]]
    assert np.allclose(models, expected)
    assert np.allclose(np.sum(models[:3], axis=0), [6.0, 6.0])  # the up nodes' sum is kept


def test_variance_corrected_round(flower_identity: None) -> None:
    # Vertex 1 receives [0, 2] (Var 2) and [0, 6] (Var 18): target 10; their mean [0, 4] has
    # Var 8, so it is stretched about its mean 2 by sqrt((10 + ε)/(8 + ε)).
    trained = {101: [0.0, 2.0], 102: [1.0, 1.0], 103: [0.0, 6.0]}
    models, metrics, _ = run_round(ring_strategy(VarianceCorrectedGossip), NODES[:3], trained)
    scale = math.sqrt((10 + 1e-4) / (8 + 1e-4))
    assert models[1] == pytest.approx([2 - 2 * scale, 2 + 2 * scale])
    # Vertex 0 and 2 receive one constant model [1, 1]: target 0, nothing to rescale.
    assert models[0] == models[2] == [1.0, 1.0]
    assert models[3] == [0.0, 0.0]
    # Only vertex 1 merged tensors of positive variance: ratio (10 + ε)/(8 + ε) · 8/10.
    assert metrics["variance_ratio"] == pytest.approx(scale**2 * 8 / 10)


def test_batched_correction_matches_the_per_node_formula(flower_identity: None) -> None:
    n, size = 12, 50
    generator = torch.Generator().manual_seed(3)
    node_ids = [7000 + 3 * i for i in range(n)]
    strategy = VarianceCorrectedGossip(
        num_clients=n,
        node_ids=node_ids,
        topology="random-regular",
        degree=4,
        init="shared",
        beta=0.25,
        seed=5,
    )
    up = [node for i, node in enumerate(node_ids) if i % 4 != 1]
    initial = ArrayRecord({"w": Array(np.zeros(size, np.float32))})
    messages = list(strategy.configure_train(1, initial, ConfigRecord(), grid_of(up)))
    trained = torch.randn((n, size), generator=generator) * torch.linspace(0.5, 2.0, n)[:, None]
    replies = [
        reply_from(
            m,
            ArrayRecord({"w": Array(trained[node_ids.index(m.metadata.dst_node_id)].numpy())}),
            1.0,
        )
        for m in messages
    ]
    strategy.aggregate_train(1, replies)
    graph = strategy.topology.graph(0)
    segments = Segments.of(["w"], [size])
    for i, node in enumerate(node_ids):
        neighbours = [j for j in graph.neighbors(i) if node_ids[j] in up]
        if node not in up:
            expected = torch.zeros(size)
        elif not neighbours:
            expected = trained[i]
        else:
            expected = corrected_average(trained[i], trained[neighbours], segments, beta=0.25)
        assert torch.allclose(strategy.models[i], expected, atol=1e-5), i


def test_running_statistics_stay_local(flower_identity: None) -> None:
    strategy = Gossip(num_clients=2, node_ids=[1, 2], topology="complete", init="shared")
    initial = arrays_of(w=[0.0, 0.0], **{"bn.running_mean": [0.0]})
    messages = list(strategy.configure_train(1, initial, ConfigRecord(), grid_of([1, 2])))
    replies = [
        reply_from(
            m,
            arrays_of(
                w=[float(m.metadata.dst_node_id), 0.0],
                **{"bn.running_mean": [10.0 * m.metadata.dst_node_id]},
            ),
            1.0,
        )
        for m in messages
    ]
    strategy.aggregate_train(1, replies)
    assert strategy.models.tolist() == [[2.0, 0.0, 10.0], [1.0, 0.0, 20.0]]


def test_no_replies_change_nothing(flower_identity: None) -> None:
    strategy = ring_strategy(Gossip)
    run_round(strategy, [101, 102, 103], TRAINED)
    before = strategy.models.clone()
    messages = list(
        strategy.configure_train(2, arrays_of(w=[0.0, 0.0]), ConfigRecord(), grid_of([]))
    )
    assert messages == []
    arrays, metrics = strategy.aggregate_train(2, [])
    assert torch.equal(strategy.models, before)
    assert metrics is not None and metrics["merged_nodes"] == 0
    assert arrays is not None and arrays["w"].numpy().tolist() == pytest.approx([0.75, 2.25])


def test_train_metrics_are_aggregated_too(flower_identity: None) -> None:
    strategy = ring_strategy(Gossip)
    messages = list(
        strategy.configure_train(1, arrays_of(w=[0.0, 0.0]), ConfigRecord(), grid_of([101, 102]))
    )
    replies = [
        Message(
            RecordDict(
                {
                    "arrays": arrays_of(w=[1.0, 1.0]),
                    "metrics": MetricRecord({"num-examples": n, "train_loss": loss}),
                }
            ),
            reply_to=m,
        )
        for m, n, loss in zip(messages, [1.0, 3.0], [2.0, 1.0], strict=True)
    ]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None and metrics["train_loss"] == pytest.approx(1.25)


def test_evaluation_sends_own_models_and_evaluate_nodes(flower_identity: None) -> None:
    strategy = ring_strategy(Gossip, fraction_evaluate=1.0)
    run_round(strategy, [101, 102, 103], TRAINED)
    messages = list(
        strategy.configure_evaluate(1, arrays_of(w=[9.0, 9.0]), ConfigRecord(), grid_of([102, 104]))
    )
    assert [m.metadata.message_type for m in messages] == [MessageType.EVALUATE] * 2
    assert [m.content["arrays"]["w"].numpy().tolist() for m in messages] == [[3, 1], [0, 0]]

    def total(record: ArrayRecord) -> dict[str, float]:
        return {"sum": float(record["w"].numpy().sum())}

    assert strategy.evaluate_nodes(total) == {
        101: {"sum": 4.0},
        102: {"sum": 4.0},
        103: {"sum": 4.0},
        104: {"sum": 0.0},
    }
    silent = ring_strategy(Gossip, fraction_evaluate=0.0)
    assert silent.evaluate_nodes(total) == {}
    assert (
        list(silent.configure_evaluate(1, arrays_of(w=[0, 0]), ConfigRecord(), grid_of(NODES)))
        == []
    )


def test_node_order_without_injected_ids(flower_identity: None) -> None:
    strategy = Gossip(num_clients=4, topology="ring", init="shared")
    run_round(strategy, [101, 102, 103], TRAINED)  # first seen: vertices 0, 1, 2
    list(strategy.configure_train(2, arrays_of(w=[0, 0]), ConfigRecord(), grid_of([999])))
    assert strategy.state_dict()["node_ids"] == [101, 102, 103, 999]
    with pytest.raises(ValueError, match="num_clients is 4"):
        strategy.configure_train(3, arrays_of(w=[0, 0]), ConfigRecord(), grid_of([555]))


# --- initialisation --------------------------------------------------------------------


def linear_factory() -> Callable[[], torch.nn.Module]:
    return lambda: torch.nn.Linear(30, 20)


def independent(seed: int) -> torch.Tensor:
    strategy = Gossip(num_clients=3, node_ids=[1, 2, 3], model_factory=linear_factory(), seed=seed)
    initial = ArrayRecord(torch.nn.Linear(30, 20).state_dict())
    list(strategy.configure_train(1, initial, ConfigRecord(), grid_of([])))
    return strategy.models.clone()


def test_independent_xavier_initialisation() -> None:
    models = independent(seed=4)
    weights, biases = models[:, :600], models[:, 600:]
    assert torch.equal(biases, torch.zeros(3, 20))
    bound = math.sqrt(6 / (30 + 20))
    assert float(weights.abs().max()) <= bound
    # Xavier-uniform variance bound²/3 = 2/(fan_in + fan_out) = 0.04, per node.
    assert weights.var(dim=1).tolist() == pytest.approx([0.04] * 3, rel=0.15)
    assert not torch.equal(weights[0], weights[1])
    assert torch.equal(models, independent(seed=4))
    assert not torch.equal(models, independent(seed=5))


def test_shared_initialisation_copies_the_first_arrays(flower_identity: None) -> None:
    strategy = ring_strategy(Gossip)
    list(strategy.configure_train(1, arrays_of(w=[1.0, 2.0]), ConfigRecord(), grid_of([])))
    assert strategy.models.tolist() == [[1.0, 2.0]] * 4


def test_xavier_init_leaves_norm_layers_alone() -> None:
    conv, norm = torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)
    xavier_init_(torch.nn.Sequential(conv, norm), torch.Generator().manual_seed(0))
    assert conv.bias is not None and conv.bias.tolist() == [0.0] * 3
    assert norm.weight.tolist() == [1.0] * 3


# --- options, files, checkpoints -------------------------------------------------------


def test_option_validation() -> None:
    with pytest.raises(ValueError, match="needs num_clients"):
        Gossip(init="shared")
    with pytest.raises(ValueError, match="model_factory"):
        Gossip(num_clients=3)
    with pytest.raises(ValueError, match="init must be one of"):
        Gossip(num_clients=3, init="zeros")
    with pytest.raises(ValueError, match="beta must be in"):
        Gossip(num_clients=3, init="shared", beta=1.5)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        VarianceCorrectedGossip(num_clients=3, init="shared", epsilon=0.0)
    with pytest.raises(ValueError, match="topology_file goes with"):
        Gossip(num_clients=3, init="shared", topology="ring", topology_file="e.txt")
    with pytest.raises(ValueError, match="3 distinct ids"):
        Gossip(num_clients=3, init="shared", node_ids=[1, 1, 2])


def test_topology_file_relative_to_the_scenario(tmp_path: Path, flower_identity: None) -> None:
    (tmp_path / "edges.txt").write_text("# path 0-1-2\n0 1\n1 2\n")
    scenario = tmp_path / "run.toml"
    strategy = DPSGD(
        num_clients=3,
        node_ids=[1, 2, 3],
        init="shared",
        topology_file="edges.txt",
        scenario_file=str(scenario),
    )
    assert strategy.topology.kind == "file" and strategy.topology.edges == ((0, 1), (1, 2))
    (tmp_path / "bad.txt").write_text("0 1\n1 5\n")
    with pytest.raises(ScenarioError, match=r"node ids 0\.\.2 on line 2") as caught:
        DPSGD(num_clients=3, init="shared", topology_file="bad.txt", scenario_file=str(scenario))
    assert caught.value.key == "strategy.topology_file"
    assert str(caught.value).startswith(f"{scenario}: strategy.topology_file")


def test_time_varying_graph_is_used_per_round(flower_identity: None) -> None:
    strategy = Gossip(
        num_clients=8, topology="random-regular", degree=3, redraw_every=1, init="shared", seed=1
    )
    grid = grid_of(list(range(8)))
    list(strategy.configure_train(1, arrays_of(w=[0.0]), ConfigRecord(), grid))
    first = strategy._adjacency(1).clone()
    second = strategy._adjacency(2)
    assert not torch.equal(first, second)
    assert torch.equal(second, adjacency(strategy.topology.graph(1), 8))


def test_checkpoint_round_trip(flower_identity: None) -> None:
    strategy = ring_strategy(Gossip)
    run_round(strategy, [101, 102, 103], TRAINED)
    state = strategy.state_dict()
    restored = ring_strategy(Gossip)
    restored.load_state_dict(state)
    assert torch.equal(restored.models, strategy.models)
    messages = list(
        restored.configure_train(2, arrays_of(w=[5.0, 5.0]), ConfigRecord(), grid_of([102]))
    )
    assert messages[0].content["arrays"]["w"].numpy().tolist() == [3.0, 1.0]
    with pytest.raises(ValueError, match="node ids differ"):
        Gossip(num_clients=4, node_ids=[1, 2, 3, 4], init="shared").load_state_dict(state)


@pytest.mark.parametrize(("cls", "expected"), [(Gossip, 1 / 7), (VarianceCorrectedGossip, 1.0)])
def test_variance_ratio_shows_the_vanishing_variance(
    cls: type[DecentralizedStrategy], expected: float, flower_identity: None
) -> None:
    # 8 fully connected nodes reply independent N(0, 1) tensors of 20,000 elements: each
    # node averages K = 7 of them, so plain gossip keeps about 1/7 of the variance (the
    # sample variance's relative error is about 1%, hence a 5% tolerance); the correction
    # restores it.
    n, size = 8, 20_000
    strategy = cls(num_clients=n, node_ids=list(range(n)), topology="complete", init="shared")
    initial = ArrayRecord({"w": Array(np.zeros(size, np.float32))})
    messages = list(strategy.configure_train(1, initial, ConfigRecord(), grid_of(list(range(n)))))
    trained = torch.randn((n, size), generator=torch.Generator().manual_seed(11))
    replies = [
        reply_from(m, ArrayRecord({"w": Array(trained[m.metadata.dst_node_id].numpy())}), 1.0)
        for m in messages
    ]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None and metrics["merged_nodes"] == n
    assert metrics["variance_ratio"] == pytest.approx(expected, rel=0.05)
    # All nodes average almost the same 7 models: they end close to each other.
    assert float(cast(float, metrics["consensus_distance"])) < 0.5 * math.sqrt(size)
