"""Communication graphs: degrees, connectivity, seeded redraws, edge-list files."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest
import torch

from fedsim.errors import ScenarioError
from fedsim.topology import (
    TopologySpec,
    adjacency,
    build_graph,
    parse_edge_list,
    read_edge_list,
)


def edges(graph: nx.Graph) -> list[tuple[int, int]]:
    return sorted(tuple(sorted(edge)) for edge in graph.edges())


def degrees(graph: nx.Graph) -> list[int]:
    return [d for _, d in sorted(graph.degree())]


def test_fixed_graphs() -> None:
    ring = build_graph(TopologySpec("ring", 5))
    assert edges(ring) == [(0, 1), (0, 4), (1, 2), (2, 3), (3, 4)]
    assert degrees(build_graph(TopologySpec("complete", 5))) == [4] * 5
    assert degrees(build_graph(TopologySpec("star", 5))) == [4, 1, 1, 1, 1]
    single = build_graph(TopologySpec("ring", 1))
    assert list(single.nodes()) == [0] and single.number_of_edges() == 0


@pytest.mark.parametrize("seed", range(5))
def test_random_regular_has_the_degree_and_is_connected(seed: int) -> None:
    graph = build_graph(TopologySpec("random-regular", 50, degree=8, seed=seed))
    assert degrees(graph) == [8] * 50
    assert nx.is_connected(graph)


@pytest.mark.parametrize("seed", range(5))
def test_sparse_erdos_renyi_draws_are_connected(seed: int) -> None:
    # p = 0.12 on 30 nodes: a single draw is disconnected about half of the time.
    graph = build_graph(TopologySpec("erdos-renyi", 30, p=0.12, seed=seed))
    assert sorted(graph.nodes()) == list(range(30))
    assert nx.is_connected(graph)


def test_disconnected_graphs_are_redrawn() -> None:
    # Single draws of G(30, 0.12) are often disconnected (some of seeds 0..19 are), yet all
    # 20 graphs built are connected: without the retry that would be a 1-in-100,000 event.
    first_draws = [nx.gnp_random_graph(30, 0.12, seed=s) for s in range(20)]
    assert not all(nx.is_connected(g) for g in first_draws)
    assert all(
        nx.is_connected(build_graph(TopologySpec("erdos-renyi", 30, p=0.12, seed=s)))
        for s in range(20)
    )


def test_impossible_connectivity_is_an_error() -> None:
    with pytest.raises(ValueError, match="no connected erdos-renyi graph"):
        build_graph(TopologySpec("erdos-renyi", 40, p=0.005))


def test_small_world() -> None:
    graph = build_graph(TopologySpec("small-world", 20, k=4, p=0.2, seed=3))
    assert graph.number_of_edges() == 20 * 4 // 2
    assert nx.is_connected(graph)
    lattice = build_graph(TopologySpec("small-world", 20, k=4, p=0.0))
    assert degrees(lattice) == [4] * 20


def test_redraws_are_seeded_and_deterministic() -> None:
    spec = TopologySpec("random-regular", 20, degree=3, redraw_every=2, seed=7)
    assert [spec.redraw_index(r) for r in (1, 2, 3, 4, 5)] == [0, 0, 1, 1, 2]
    again = TopologySpec("random-regular", 20, degree=3, redraw_every=2, seed=7)
    assert edges(spec.graph(1)) == edges(again.graph(1))
    assert edges(spec.graph(0)) != edges(spec.graph(1))
    other_seed = TopologySpec("random-regular", 20, degree=3, seed=8)
    assert edges(other_seed.graph(0)) != edges(spec.graph(0))
    # A fixed topology has only one draw.
    assert TopologySpec("ring", 5, redraw_every=2).redraw_index(9) == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "torus"}, "topology must be one of"),
        ({"kind": "random-regular", "degree": 3, "num_nodes": 5}, "N·degree even"),
        ({"kind": "random-regular", "degree": 6, "num_nodes": 6}, "0 < degree < N"),
        ({"kind": "small-world", "k": 1}, "2 <= k < N"),
        ({"kind": "erdos-renyi", "p": 1.5}, "p must be in"),
        ({"kind": "erdos-renyi", "p": 0.0}, "never connected"),
        ({"kind": "ring", "redraw_every": -1}, "redraw_every"),
        ({"kind": "ring", "num_nodes": 0}, "at least one node"),
        ({"kind": "file", "edges": ((0, 9),)}, "vertices 0..5"),
    ],
)
def test_validation(options: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"num_nodes": 6, **options}
    with pytest.raises(ValueError, match=message):
        TopologySpec(**arguments)  # type: ignore[arg-type]


def test_adjacency_is_symmetric_without_self_loops() -> None:
    matrix = adjacency(build_graph(TopologySpec("star", 4)), 4)
    assert matrix.dtype == torch.bool
    assert torch.equal(matrix, matrix.T)
    assert matrix.int().tolist() == [[0, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]


def test_edge_list_file(tmp_path: Path) -> None:
    path = tmp_path / "edges.txt"
    path.write_text("# a triangle plus a tail\n0 1\n1 2   # inline comment\n\n  2 0\n2\t3\n0 1\n")
    pairs = read_edge_list(path, 4, source="run.toml")
    assert pairs == ((0, 1), (1, 2), (2, 0), (2, 3), (0, 1))
    graph = build_graph(TopologySpec("file", 5, edges=pairs))
    assert edges(graph) == [(0, 1), (0, 2), (1, 2), (2, 3)]
    assert sorted(graph.nodes()) == [0, 1, 2, 3, 4]  # node 4 has no edge but exists


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 1\n1 2 3\n", "line 2 of .*edges.txt, got '1 2 3'"),
        ("0 x\n", "two integer node ids"),
        ("0 1\n1 7\n", "node ids 0..3 on line 2 of .*, got 7"),
        ("-1 0\n", "got -1"),
        ("2 2\n", "two different nodes on line 1"),
    ],
)
def test_bad_edge_list_lines(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "edges.txt"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message) as caught:
        read_edge_list(path, 4, source="scen/run.toml")
    assert caught.value.key == "strategy.topology_file"
    assert str(caught.value).startswith("scen/run.toml: strategy.topology_file: expected")


def test_missing_edge_list_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="a readable edge-list file") as caught:
        read_edge_list(tmp_path / "nope.txt", 4, source="run.toml")
    assert caught.value.key == "strategy.topology_file"


def test_parse_without_file_name() -> None:
    with pytest.raises(ScenarioError, match="on line 1, got 'a b'"):
        parse_edge_list("a b", 3, source="run.toml")
