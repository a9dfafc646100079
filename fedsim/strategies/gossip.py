"""Decentralised training: every node keeps its own model and merges its neighbours'.

There is no global model. Each round, in the synchronous form natural to a
round-based simulator: every reachable node trains locally from its own model
(its train message carries that model, through the same engine and Flower
ClientApp as federated runs), sends the result to its neighbours in a graph
(:mod:`fedsim.topology`), and merges what arrived. The strategies:

- ``gossip`` (:class:`Gossip`): plain averaging, x_i ← β·x_i + (1 − β)·mean of
  the received models (β = 0 replaces the model by the neighbours' average);
- ``gossip-vc`` (:class:`VarianceCorrectedGossip`): the same, then each tensor
  rescaled to the mean variance of the received ones — Tian et al. 2024,
  "Vanishing Variance Problem in Fully Decentralized Neural-Network Systems",
  https://arxiv.org/abs/2404.04616 (math in
  :mod:`fedsim.strategies.variance_correction`);
- ``dpsgd`` (:class:`DPSGD`): Metropolis–Hastings mixing,
  W_ij = 1/(1 + max(d_i, d_j)) on edges and W_ii = 1 − Σ_j W_ij, with d the
  degrees in the current graph — Lian et al. 2017, "Can Decentralized
  Algorithms Outperform Centralized Algorithms?", https://arxiv.org/abs/1705.09056.
  Training happens before mixing (the adapt-then-combine form of D-PSGD).

Participation: the nodes that replied this round are up; every other node is
down (not reachable, not sampled, dropped or late): it neither trains, sends
nor receives, and its model stays as it was. An up node merges the models of
its up neighbours; one that received nothing keeps its own trained model. For
D-PSGD the weight W_ij of a neighbour whose model did not arrive is added to
the node's own weight W_ii, so the matrix over the up nodes stays symmetric and
doubly stochastic (their average is preserved). BatchNorm running statistics
are never averaged: each node keeps its own (as the reference code does).

Node models are the rows of one ``(N, P)`` tensor on the strategy's device and
a round's merge is one ``(N, N)`` mixing matrix (sparse when the graph is) times
it. Nodes are graph vertices ``0..N−1`` in the order of the injected
``node_ids`` (index = client id); without them, in the order nodes are first
seen (sorted within a round). Initial models are either independent Xavier
draws per node (weights Xavier-uniform from ``seeding.torch_generator(seed,
"gossip-init", vertex)``, biases zero: what makes them uncorrelated, as in the
paper) or the run's initial model for all (``init = "shared"``).

Each round the aggregate-train metrics carry ``consensus_distance`` (mean L2
distance of the node models to their average, running statistics excluded),
``variance_ratio`` (per tensor, the variance after merging over the
mixing-weighted mean variance of the models merged, averaged over merging
nodes and tensors weighted by tensor size: about 1/K for plain averaging of K
uncorrelated models, about 1 with the correction) and ``merged_nodes``; the
model returned for central evaluation is the average of all node models, and
:meth:`DecentralizedStrategy.evaluate_nodes` evaluates every node's own model.

Limitation: optimiser state stays local but does not persist — fedsim's
ClientApp builds a fresh SGD optimiser every round, so momentum restarts each
round, whereas the reference simulator keeps every node's momentum buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import MessageType
from flwr.serverapp import Grid

from fedsim.arrays import Layout
from fedsim.models import xavier_init_
from fedsim.records import first_of
from fedsim.seeding import torch_generator
from fedsim.strategies.base import FedsimStrategy
from fedsim.strategies.client_state import ClientRows
from fedsim.strategies.variance_correction import (
    EPSILON,
    Segments,
    rescale_to_variance,
    segment_variances,
)
from fedsim.topology import TopologySpec, adjacency, read_edge_list

INITS = ("independent", "shared")
# Aggregate-train metric and per-node server metric names.
CONSENSUS_DISTANCE = "consensus_distance"
VARIANCE_RATIO = "variance_ratio"
MERGED_NODES = "merged_nodes"
RECEIVED = "received"
# Mixing matrices at most this dense (and at least this large) are applied as sparse ones.
SPARSE_MAX_DENSITY = 0.1
SPARSE_MIN_NODES = 64


def received_matrix(graph_adjacency: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``R[i, j]``: node i received node j's model (an edge, and both up).

    >>> ring = torch.tensor([[0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    >>> received_matrix(ring, torch.tensor([True, True, False])).int().tolist()
    [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    """
    return graph_adjacency & up.unsqueeze(0) & up.unsqueeze(1)


def neighbour_mean_matrix(received: torch.Tensor) -> torch.Tensor:
    """``A = R / K`` row-wise: node i's mean over what it received (zero rows if nothing).

    >>> neighbour_mean_matrix(torch.tensor([[0, 1, 1], [1, 0, 0], [0, 0, 0]]).bool()).tolist()
    [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    weights = received.float()
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)


def gossip_matrix(received: torch.Tensor, beta: float) -> torch.Tensor:
    """β·I + (1 − β)·A on rows that received something, the identity elsewhere.

    >>> gossip_matrix(torch.tensor([[0, 1], [0, 0]]).bool(), 0.25).tolist()
    [[0.25, 0.75], [0.0, 1.0]]
    """
    merging = received.any(dim=1)
    mean = neighbour_mean_matrix(received)
    eye = torch.eye(received.shape[0], device=received.device)
    mixed = beta * eye + (1.0 - beta) * mean
    return torch.where(merging.unsqueeze(1), mixed, eye)


def metropolis_hastings_matrix(
    graph_adjacency: torch.Tensor, received: torch.Tensor
) -> torch.Tensor:
    """D-PSGD weights: W_ij = 1/(1 + max(d_i, d_j)) where j's model arrived, W_ii = 1 − Σ_j W_ij.

    Degrees d come from the whole graph; the weight of a neighbour whose model
    did not arrive moves to W_ii, keeping W symmetric with rows summing to 1.

    >>> path = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    >>> [[round(w, 4) for w in row] for row in metropolis_hastings_matrix(path, path).tolist()]
    [[0.6667, 0.3333, 0.0], [0.3333, 0.3333, 0.3333], [0.0, 0.3333, 0.6667]]
    """
    degree = graph_adjacency.sum(dim=1).float()
    weights = received.float() / (1.0 + torch.maximum(degree.unsqueeze(0), degree.unsqueeze(1)))
    return weights + torch.diag(1.0 - weights.sum(dim=1))


def mix(matrix: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
    """``matrix @ models``, as a sparse product when the matrix is large and sparse."""
    if matrix.shape[0] >= SPARSE_MIN_NODES and (
        matrix.count_nonzero().item() <= SPARSE_MAX_DENSITY * matrix.numel()
    ):
        return torch.sparse.mm(matrix.to_sparse(), models)
    return matrix @ models


class DecentralizedStrategy(FedsimStrategy):
    """Node models, topology and the round protocol; subclasses choose the merge.

    Options (``[strategy]`` table): ``topology`` (``ring`` | ``random-regular`` |
    ``erdos-renyi`` | ``complete`` | ``star`` | ``small-world`` | ``file``),
    ``degree`` (random regular d), ``k`` (small-world neighbours), ``p``
    (Erdős–Rényi edge / small-world rewiring probability), ``topology_file``
    (an edge list, relative to the scenario file; implies ``topology =
    "file"``), ``redraw_every`` (re-draw a random graph every k rounds; 0 =
    never), ``init`` (``independent`` | ``shared``), ``fraction_train``,
    ``fraction_evaluate``. Injected: ``num_clients`` (required), ``node_ids``,
    ``seed``, ``device``, ``model_factory`` (required for independent
    initialisation), ``scenario_file``.
    """

    def __init__(
        self,
        *,
        topology: str | None = None,
        degree: int = 8,
        k: int = 4,
        p: float = 0.1,
        topology_file: str | None = None,
        redraw_every: int = 0,
        init: str = "independent",
        node_ids: list[int] | None = None,
        model_factory: Callable[[], torch.nn.Module] | None = None,
        scenario_file: str | Path | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if self.num_clients is None:
            raise ValueError(f"{type(self).__name__} needs num_clients (all nodes)")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if init == "independent" and model_factory is None:
            raise ValueError("init = 'independent' needs a model (model_factory)")
        if node_ids is not None and len(set(node_ids)) != self.num_clients:
            raise ValueError(f"node_ids needs {self.num_clients} distinct ids, got {node_ids}")
        kind = topology if topology is not None else ("file" if topology_file else "ring")
        edges: tuple[tuple[int, int], ...] = ()
        if (kind == "file") != (topology_file is not None):
            raise ValueError("topology_file goes with topology = 'file', and only with it")
        if topology_file is not None:
            path = Path(topology_file)
            if scenario_file is not None and not path.is_absolute():
                path = Path(scenario_file).parent / path
            source = scenario_file if scenario_file is not None else topology_file
            edges = read_edge_list(path, self.num_clients, source=source)
        self.topology = TopologySpec(
            kind,
            self.num_clients,
            degree=degree,
            k=k,
            p=p,
            edges=edges,
            redraw_every=redraw_every,
            seed=self.seed,
        )
        self.init = init
        self.model_factory = model_factory
        self._fixed_node_ids = list(node_ids) if node_ids is not None else None
        self._rows = ClientRows(self.num_clients, node_ids or ())
        self._layout: Layout | None = None
        self._segments: Segments | None = None
        self._models: torch.Tensor | None = None
        self._graph: tuple[int, torch.Tensor] | None = None
        self._adjacency(1)  # the first graph now: an impossible one is an options error

    # --- the merge (what subclasses choose) ---------------------------------

    def mixing_matrix(self, graph_adjacency: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        """``(N, N)`` row-stochastic weights; rows of non-merging nodes are the identity."""
        raise NotImplementedError

    def correct(
        self, mixed: torch.Tensor, received: torch.Tensor, variances: torch.Tensor
    ) -> torch.Tensor:
        """A step after mixing (the variance correction); plain averaging has none.

        ``mixed`` are the merging nodes' new models, ``received`` their rows of the
        received matrix, ``variances`` the ``(N, S)`` tensor variances of all trained models.
        """
        return mixed

    # --- node models ----------------------------------------------------------

    @property
    def models(self) -> torch.Tensor:
        """The ``(N, P)`` node models, row = graph vertex."""
        if self._models is None:
            raise RuntimeError("no node models yet: configure_train initialises them")
        return self._models

    def _ensure_models(self, arrays: ArrayRecord) -> Layout:
        if self._layout is None:
            self._layout = Layout.of(arrays)
            self._segments = Segments.of_layout(self._layout)
        if self._models is None:
            self._models = self._initial_models(self._layout, arrays)
        return self._layout

    def _initial_models(self, layout: Layout, arrays: ArrayRecord) -> torch.Tensor:
        assert self.num_clients is not None
        if self.init == "shared":
            return layout.flatten(arrays, self.device).repeat(self.num_clients, 1)
        assert self.model_factory is not None
        models = torch.empty((self.num_clients, layout.size), device=self.device)
        for vertex in range(self.num_clients):
            model = self.model_factory()
            xavier_init_(model, torch_generator(self.seed, "gossip-init", vertex))
            state = model.state_dict()
            if set(state) != set(layout.names):
                raise ValueError(
                    f"model_factory's model has entries {sorted(state)}, "
                    f"the run's model {sorted(layout.names)}"
                )
            models[vertex] = torch.cat(
                [state[name].detach().reshape(-1).float() for name in layout.names]
            ).to(self.device)
        return models

    def _adjacency(self, server_round: int) -> torch.Tensor:
        index = self.topology.redraw_index(server_round)
        if self._graph is None or self._graph[0] != index:
            graph = self.topology.graph(index)
            self._graph = (index, adjacency(graph, self.topology.num_nodes, self.device))
        return self._graph[1]

    def _node_messages(
        self, nodes: list[int], config: ConfigRecord, kind: str, server_round: int
    ) -> list[Message]:
        assert self._layout is not None
        rows = self._rows.rows(nodes)
        messages: list[Message] = []
        for node, row in zip(nodes, rows, strict=True):
            own = self._layout.to_record(self.models[int(row)])
            messages.extend(self._messages(own, config, [node], kind, server_round))
        return messages

    # --- Flower strategy interface -------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send every (sampled) reachable node its own model.

        ``arrays`` only initialises the node models on the first call (the
        layout, and the shared start for ``init = "shared"``).
        """
        self._ensure_models(arrays)
        if self.fraction_train == 0.0:
            return []
        nodes = self._sample(grid, self.fraction_train, self.min_train_nodes, server_round)
        return self._node_messages(nodes, config, MessageType.TRAIN, server_round)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation: every (sampled) reachable node evaluates its own model."""
        self._ensure_models(arrays)
        if self.fraction_evaluate == 0.0:
            return []
        nodes = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes, server_round)
        return self._node_messages(nodes, config, MessageType.EVALUATE, server_round)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Store the trained models, merge, and return the average of all node models."""
        valid = self._valid_replies(replies, is_train=True)
        if self._layout is None or self._segments is None:
            raise RuntimeError("aggregate_train called before configure_train")
        layout, segments = self._layout, self._segments
        contents = [reply.content for reply in valid]
        rows = self._rows.rows([reply.metadata.src_node_id for reply in valid])
        index = torch.from_numpy(rows).to(self.device)
        # In place (memory: the node models are the big tensor): the replied rows become
        # the trained models, then the merging rows their merge; down rows are untouched.
        models = self.models
        if len(valid):
            records = [first_of(content, ArrayRecord) for content in contents]
            models[index] = layout.stack(records, self.device)
        up = torch.zeros(models.shape[0], dtype=torch.bool, device=self.device)
        up[index] = True
        graph_adjacency = self._adjacency(server_round)
        received = received_matrix(graph_adjacency, up)
        merging = received.any(dim=1)
        matrix = self.mixing_matrix(graph_adjacency, received)
        variances = segment_variances(models, segments)
        mixed = mix(matrix[merging], models)
        for start, stop in segments.local_bounds:
            mixed[:, start:stop] = models[merging, start:stop]
        mixed = self.correct(mixed, received[merging], variances)
        models[merging] = mixed
        counts = received.sum(dim=1).tolist()
        self.client_metrics = {
            int(node): {RECEIVED: float(counts[int(row)])}
            for node, row in zip((r.metadata.src_node_id for r in valid), rows, strict=True)
        }
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key) if contents else None
        record = MetricRecord(dict(metrics.items()) if metrics is not None else {})
        record[CONSENSUS_DISTANCE] = consensus_distance(models, segments)
        record[MERGED_NODES] = int(merging.sum().item())
        ratio = variance_ratio(mixed, matrix[merging] @ variances, segments)
        if ratio is not None:
            record[VARIANCE_RATIO] = ratio
        return layout.to_record(models.mean(dim=0)), record

    def evaluate_nodes(
        self, evaluate: Callable[[ArrayRecord], dict[str, float]]
    ) -> dict[int, dict[str, float]]:
        """Node id → ``evaluate`` of that node's own model (every node with a known id)."""
        if self._layout is None or self._models is None:
            return {}
        layout, models = self._layout, self._models
        return {
            node: evaluate(layout.to_record(models[row]))
            for row, node in enumerate(self._rows.node_ids)
        }

    # --- checkpoints ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Node ids in vertex order and the node models (a CPU tensor, or None)."""
        models = None if self._models is None else self._models.detach().cpu().clone()
        return {"node_ids": self._rows.node_ids, "models": models}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"node_ids", "models"}:
            raise ValueError(f"{type(self).__name__} state needs node_ids and models")
        assert self.num_clients is not None
        node_ids = [int(n) for n in state["node_ids"]]
        if self._fixed_node_ids is not None and node_ids != self._fixed_node_ids:
            raise ValueError("the checkpoint's node ids differ from this run's")
        models = state["models"]
        if models is not None and models.shape[0] != self.num_clients:
            raise ValueError(f"{models.shape[0]} node models for {self.num_clients} nodes")
        self._rows = ClientRows(self.num_clients, node_ids)
        self._models = None if models is None else models.to(self.device)


def consensus_distance(models: torch.Tensor, segments: Segments) -> float:
    """Mean L2 distance of the rows to their average, running statistics excluded.

    >>> segments = Segments.of(["w"], [2])
    >>> consensus_distance(torch.tensor([[0.0, 0.0], [6.0, 8.0]]), segments)
    5.0
    """
    parameters = models[:, segments.mixed_columns(models.device)]
    return float((parameters - parameters.mean(dim=0)).norm(dim=1).mean().item())


def variance_ratio(
    merged: torch.Tensor, expected: torch.Tensor, segments: Segments
) -> float | None:
    """Var(merged) / ``expected`` over rows and corrected tensors, weighted by tensor size.

    ``expected`` is ``(M, S)``, the mixing-weighted mean variance of the models
    each row merged; entries where it is zero are skipped, and ``None`` is
    returned when none is positive. Weighting by the number of elements makes
    the ratio the share of variance kept per parameter: small tensors (biases
    that start at zero and whose variance stays far below ε, which the
    correction then barely rescales) do not drown out the weight matrices.

    >>> segments = Segments.of(["w", "v"], [2, 2])
    >>> variance_ratio(torch.tensor([[0.0, 2.0, 1.0, 1.0]]), torch.tensor([[4.0, 0.0]]), segments)
    0.5
    >>> segments = Segments.of(["w", "b"], [3, 2])  # ratios 1 (3 elements) and 0.5 (2)
    >>> variance_ratio(torch.tensor([[0.0, 1.0, 2.0, 0.0, 1.0]]),
    ...                torch.tensor([[1.0, 1.0]]), segments)
    0.8
    """
    tensors = list(segments.corrected)
    if not tensors or merged.shape[0] == 0:
        return None
    after = segment_variances(merged, segments)[:, tensors]
    before = expected[:, tensors]
    valid = before > 0
    if not bool(valid.any()):
        return None
    sizes = torch.tensor(
        [segments.bounds[i][1] - segments.bounds[i][0] for i in tensors],
        dtype=after.dtype,
        device=after.device,
    ).expand_as(after)
    ratios = after[valid] / before[valid]
    return float((ratios * sizes[valid]).sum().item() / sizes[valid].sum().item())


class Gossip(DecentralizedStrategy):
    """Plain gossip averaging: x_i ← β·x_i + (1 − β)·mean of the received models.

    Options: ``beta`` (β in [0, 1], default 0: replace by the neighbours'
    average; 0.5 is the "conservative" variant), plus the topology options of
    :class:`DecentralizedStrategy`.
    """

    def __init__(self, *, beta: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = float(beta)

    def mixing_matrix(self, graph_adjacency: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        return gossip_matrix(received, self.beta)


class VarianceCorrectedGossip(Gossip):
    """Gossip averaging, then every tensor rescaled to the received models' mean variance.

    Options: ``beta`` (as :class:`Gossip`), ``epsilon`` (ε > 0 of the
    rescaling, default 1e-4), plus the topology options.
    """

    def __init__(self, *, epsilon: float = EPSILON, **options: Any) -> None:
        super().__init__(**options)
        if not epsilon > 0.0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def correct(
        self, mixed: torch.Tensor, received: torch.Tensor, variances: torch.Tensor
    ) -> torch.Tensor:
        assert self._segments is not None
        target = neighbour_mean_matrix(received) @ variances  # mean variance of what arrived
        return rescale_to_variance(mixed, self._segments, target, self.epsilon)


class DPSGD(DecentralizedStrategy):
    """D-PSGD: Metropolis–Hastings mixing of the trained models over the current graph.

    Options: the topology options of :class:`DecentralizedStrategy`.
    """

    def mixing_matrix(self, graph_adjacency: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        return metropolis_hastings_matrix(graph_adjacency, received)
