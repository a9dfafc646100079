"""The shells shared by fedsim's strategies.

fedsim's strategies are Flower Message-API strategies (subclasses of Flower's
``FedAvg``), so they run unchanged in a real Flower deployment. What they add
to Flower's class is kept here, once. :class:`FedsimStrategy`, the base of all:

- node selection samples from the reachable nodes with a seeded generator
  (Flower's own uses Python's global ``random``) and never waits for nodes that
  participation made unreachable (``min_*_nodes`` default to 0);
- ``client_metrics`` (node id → metrics) carries per-client diagnostics of the
  last aggregation (FedAU's ω, FedLAW's λ) to the results;
- ``state_dict``/``load_state_dict`` carry strategy state through checkpoints.

:class:`ServerUpdateStrategy`, the base of the strategies with one global model:
replies are turned into one ``(clients, parameters)`` tensor on the server
device, and a subclass implements only :meth:`ServerUpdateStrategy.server_update`,
a small function from (global vector, client vectors, node ids, example counts)
to the new global vector. Decentralised strategies (one model per node,
:mod:`fedsim.strategies.gossip`) build on :class:`FedsimStrategy` directly.

Constructor keywords that fedsim fills in from the scenario when a strategy
declares them: ``num_clients``, ``seed``, ``device`` and, for oracle baselines
only, ``participation_probabilities`` (node id → long-run rate p_n).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedsim import keys
from fedsim.arrays import Layout
from fedsim.records import aggregate_metric_records, check_reply_consistency, first_of
from fedsim.seeding import rng


def _weight(content: RecordDict, key: str) -> float:
    value = first_of(content, MetricRecord)[key]
    if not isinstance(value, int | float):
        raise ValueError(f"reply metric {key!r} must be a number, got {value!r}")
    return float(value)


class FedsimStrategy(FedAvg):
    """A Flower ``FedAvg`` with seeded node selection, per-client diagnostics and a
    checkpointable state; subclasses choose what is sent and how replies merge."""

    def __init__(
        self,
        *,
        num_clients: int | None = None,
        seed: int = 0,
        device: str = "cpu",
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 0,
        min_evaluate_nodes: int = 0,
        min_available_nodes: int = 0,
        **flower_options: Any,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            **flower_options,
        )
        # Flower's default metric averaging, the same numbers without its record views.
        if self.train_metrics_aggr_fn is aggregate_metricrecords:
            self.train_metrics_aggr_fn = aggregate_metric_records
        if self.evaluate_metrics_aggr_fn is aggregate_metricrecords:
            self.evaluate_metrics_aggr_fn = aggregate_metric_records
        if num_clients is not None and num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        self.num_clients = num_clients
        self.seed = seed
        self.device = torch.device(device)
        self.client_metrics: dict[int, dict[str, float]] = {}

    # --- node selection ---------------------------------------------------

    def _sample(self, grid: Grid, fraction: float, minimum: int, server_round: int) -> list[int]:
        nodes = sorted(grid.get_node_ids())
        wanted = min(len(nodes), max(int(len(nodes) * fraction), minimum))
        if wanted >= len(nodes):
            return nodes
        generator = rng(self.seed, "strategy-sampling", server_round)
        chosen = generator.choice(len(nodes), size=wanted, replace=False)
        return [nodes[i] for i in sorted(chosen)]

    def _messages(
        self, arrays: ArrayRecord, config: ConfigRecord, nodes: list[int], kind: str, rnd: int
    ) -> list[Message]:
        config = ConfigRecord({**config, keys.SERVER_ROUND: rnd})
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return list(self._construct_messages(record, nodes, kind))

    def _valid_replies(self, replies: Iterable[Message], *, is_train: bool) -> list[Message]:
        """The replies without errors (errors logged), checked for consistency as
        Flower's ``_check_and_log_replies`` does
        (:func:`fedsim.records.check_reply_consistency`)."""
        valid, _ = self._check_and_log_replies(replies, is_train=is_train, validate=False)
        contents = [reply.content for reply in valid]
        check_reply_consistency(contents, self.weighted_by_key, check_arrays=is_train)
        return valid

    # --- checkpoints --------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Strategy state to checkpoint (override when a strategy keeps any)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")


class ServerUpdateStrategy(FedsimStrategy):
    """One global model; aggregation is :meth:`server_update` on flat tensors."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._global: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model to a seeded sample of the reachable nodes."""
        self._global = arrays
        if self.fraction_train == 0.0:
            return []
        nodes = self._sample(grid, self.fraction_train, self.min_train_nodes, server_round)
        return self._messages(arrays, config, nodes, MessageType.TRAIN, server_round)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model for federated evaluation to a seeded sample."""
        if self.fraction_evaluate == 0.0:
            return []
        nodes = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes, server_round)
        return self._messages(arrays, config, nodes, MessageType.EVALUATE, server_round)

    # --- aggregation --------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Stack the valid replies and apply :meth:`server_update`."""
        valid = self._valid_replies(replies, is_train=True)
        self.client_metrics = {}
        if self._global is None:
            raise RuntimeError("aggregate_train called before configure_train")
        layout = Layout.of(self._global)
        global_vector = layout.flatten(self._global, self.device)
        contents = [reply.content for reply in valid]
        node_ids = [reply.metadata.src_node_id for reply in valid]
        client_vectors = layout.stack(
            [first_of(content, ArrayRecord) for content in contents], self.device
        )
        num_examples = np.array([_weight(c, self.weighted_by_key) for c in contents])
        new_vector = self.server_update(
            server_round, global_vector, client_vectors, node_ids, num_examples
        )
        if new_vector is None:
            return None, None
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key) if contents else None
        return layout.to_record(new_vector), metrics

    def server_update(
        self,
        server_round: int,
        global_vector: torch.Tensor,
        client_vectors: torch.Tensor,
        node_ids: list[int],
        num_examples: np.ndarray,
    ) -> torch.Tensor | None:
        """The new global vector, or ``None`` to keep the model unchanged."""
        raise NotImplementedError
