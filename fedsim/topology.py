"""Communication graphs for decentralised training: who sends models to whom.

Decentralised strategies (gossip averaging, D-PSGD) have no server model:
every node merges the models of its neighbours in a graph. This module builds
those graphs with networkx — ring, random regular, Erdős–Rényi, fully
connected, star, Watts–Strogatz small world, or an edge list read from a file —
on the vertices ``0..N−1`` (vertex = client id), and turns them into the dense
boolean adjacency the strategies multiply with.

Random graphs are drawn from ``seeding.rng(seed, "topology", redraw_index)``, so
a time-varying topology (re-drawn every k rounds) is a pure function of the
scenario seed and the round; a random graph that comes out disconnected is
re-drawn with the next seed derived from that stream (a disconnected graph
would split training into islands that never meet), and an error is raised when
no connected draw is found. Fixed graphs (ring, complete, star, file) are the
same at every redraw. The topologies are those of Tian et al. 2024,
https://arxiv.org/abs/2404.04616 (reference code: github.com/twoentartian/DFL_torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import torch

from fedsim.errors import ScenarioError
from fedsim.seeding import rng

KINDS = ("ring", "random-regular", "erdos-renyi", "complete", "star", "small-world", "file")
RANDOM_KINDS = ("random-regular", "erdos-renyi", "small-world")
MAX_DRAWS = 100
FILE_KEY = "strategy.topology_file"


@dataclass(frozen=True)
class TopologySpec:
    """What graph to build on ``num_nodes`` vertices, and how often to re-draw it.

    ``degree`` is the random-regular degree d, ``k`` the Watts–Strogatz ring
    neighbours, ``p`` the Erdős–Rényi edge probability or the Watts–Strogatz
    rewiring probability, ``edges`` the pairs of a ``file`` topology;
    ``redraw_every`` = 0 keeps one graph for the whole run.

    >>> spec = TopologySpec("random-regular", 10, degree=3, seed=1)
    >>> sorted(d for _, d in spec.graph(0).degree()) == [3] * 10
    True
    """

    kind: str
    num_nodes: int
    degree: int = 8
    k: int = 4
    p: float = 0.1
    edges: tuple[tuple[int, int], ...] = ()
    redraw_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        validate(self)

    def redraw_index(self, server_round: int) -> int:
        """Which draw round ``server_round`` (from 1) uses.

        >>> spec = TopologySpec("erdos-renyi", 4, p=0.5, redraw_every=3)
        >>> [spec.redraw_index(r) for r in range(1, 8)]
        [0, 0, 0, 1, 1, 1, 2]
        """
        if self.redraw_every <= 0 or self.kind not in RANDOM_KINDS:
            return 0
        return max(server_round - 1, 0) // self.redraw_every

    def graph(self, redraw_index: int = 0) -> nx.Graph:
        """The graph of draw ``redraw_index`` (always the same for a fixed topology)."""
        return build_graph(self, redraw_index)


def validate(spec: TopologySpec) -> None:
    """Raise ``ValueError`` for options no graph can satisfy."""
    n = spec.num_nodes
    if spec.kind not in KINDS:
        raise ValueError(f"topology must be one of {', '.join(KINDS)}, got {spec.kind!r}")
    if n < 1:
        raise ValueError(f"a topology needs at least one node, got {n}")
    if spec.redraw_every < 0:
        raise ValueError(f"redraw_every must be >= 0, got {spec.redraw_every}")
    if spec.kind == "random-regular" and not (0 < spec.degree < n and n * spec.degree % 2 == 0):
        raise ValueError(
            f"a random regular graph needs 0 < degree < N and N·degree even, "
            f"got degree {spec.degree} with N = {n}"
        )
    if spec.kind == "small-world" and not (2 <= spec.k < n):
        raise ValueError(f"a small-world graph needs 2 <= k < N, got k = {spec.k} with N = {n}")
    if spec.kind in ("erdos-renyi", "small-world") and not 0.0 <= spec.p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {spec.p}")
    if spec.kind == "erdos-renyi" and spec.p == 0.0 and n > 1:
        raise ValueError("an Erdős–Rényi graph with p = 0 is never connected")
    if spec.kind == "file" and any(not (0 <= u < n and 0 <= v < n) for u, v in spec.edges):
        raise ValueError(f"edges must join vertices 0..{n - 1}")


def _random_graph(spec: TopologySpec, seed: int) -> nx.Graph:
    n = spec.num_nodes
    if spec.kind == "random-regular":
        return nx.random_regular_graph(spec.degree, n, seed=seed)
    if spec.kind == "erdos-renyi":
        return nx.gnp_random_graph(n, spec.p, seed=seed)
    return nx.watts_strogatz_graph(n, spec.k, spec.p, seed=seed)


def build_graph(spec: TopologySpec, redraw_index: int = 0) -> nx.Graph:
    """The graph on vertices ``0..N−1``; random kinds are connected draws.

    >>> sorted(build_graph(TopologySpec("star", 4)).edges())
    [(0, 1), (0, 2), (0, 3)]
    >>> sorted(build_graph(TopologySpec("ring", 4)).edges())
    [(0, 1), (0, 3), (1, 2), (2, 3)]
    """
    n = spec.num_nodes
    if spec.kind == "ring":
        graph = nx.cycle_graph(n)
    elif spec.kind == "complete":
        graph = nx.complete_graph(n)
    elif spec.kind == "star":
        graph = nx.star_graph(n - 1)
    elif spec.kind == "file":
        graph = nx.Graph()
        graph.add_nodes_from(range(n))
        graph.add_edges_from(spec.edges)
    else:
        seeds = rng(spec.seed, "topology", redraw_index)
        for _ in range(MAX_DRAWS):
            graph = _random_graph(spec, int(seeds.integers(2**31)))
            if n == 1 or nx.is_connected(graph):
                break
        else:
            raise ValueError(
                f"no connected {spec.kind} graph on {n} nodes in {MAX_DRAWS} draws "
                f"(degree {spec.degree}, k {spec.k}, p {spec.p}): make the graph denser"
            )
    graph.add_nodes_from(range(n))
    graph.remove_edges_from(list(nx.selfloop_edges(graph)))  # cycle_graph(1) has one
    return graph


def adjacency(graph: nx.Graph, num_nodes: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The ``(N, N)`` boolean adjacency (symmetric, no self-loops) on ``device``.

    >>> adjacency(nx.path_graph(3), 3).int().tolist()
    [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    """
    matrix = np.zeros((num_nodes, num_nodes), dtype=bool)
    for u, v in graph.edges():
        if u != v:
            matrix[u, v] = matrix[v, u] = True
    return torch.from_numpy(matrix).to(device)


def parse_edge_list(
    text: str,
    num_nodes: int,
    *,
    source: str | Path,
    key: str = FILE_KEY,
    name: str | None = None,
) -> tuple[tuple[int, int], ...]:
    """The ``(u, v)`` pairs of an edge-list text: one ``u v`` pair per line, ``#`` comments.

    Vertices are client ids ``0..N−1``; a line that is not two such integers,
    or joins a vertex to itself, is a :class:`ScenarioError` naming the line.

    >>> parse_edge_list("# ring of 3\\n0 1\\n1 2  # last\\n\\n2 0\\n", 3, source="s.toml")
    ((0, 1), (1, 2), (2, 0))
    """
    edges: list[tuple[int, int]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        where = f"line {number}" if name is None else f"line {number} of {name}"
        try:
            u, v = (int(field) for field in fields)
        except ValueError:
            raise ScenarioError(
                source, key, f"'u v' (two integer node ids) on {where}", got=raw.strip()
            ) from None
        for vertex in (u, v):
            if not 0 <= vertex < num_nodes:
                raise ScenarioError(
                    source, key, f"node ids 0..{num_nodes - 1} on {where}", got=vertex
                )
        if u == v:
            raise ScenarioError(source, key, f"two different nodes on {where}", got=raw.strip())
        edges.append((u, v))
    return tuple(edges)


def read_edge_list(
    path: str | Path, num_nodes: int, *, source: str | Path, key: str = FILE_KEY
) -> tuple[tuple[int, int], ...]:
    """:func:`parse_edge_list` of a file; a missing or unreadable file is a ScenarioError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioError(source, key, "a readable edge-list file", got=str(path)) from error
    return parse_edge_list(text, num_nodes, source=source, key=key, name=str(path))
