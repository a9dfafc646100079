"""Per-client server state keyed by Flower node id: a row map and one stacked tensor.

Strategies that remember something about every client (FedAU's participation
intervals, MIFA's and FedVARP's latest updates) see clients only as Flower node
ids, which are arbitrary integers (random 64-bit ones in Flower's own
simulation engine). :class:`ClientRows` gives each node id a dense row index on
first sight, at most ``num_clients`` of them, so the state itself can be plain
arrays; :class:`UpdateStore` is one ``(num_clients, parameters)`` tensor on the
server device with a row per client, instead of a dict of state dicts, and
:class:`StoredUpdatesStrategy` the strategy shell around one (MIFA, FedVARP).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from fedsim.strategies.base import ServerUpdateStrategy


class ClientRows:
    """Node id → dense row index, allocated in order of first sight.

    >>> rows = ClientRows(3)
    >>> rows.rows([2**63 - 1, 17]).tolist(), rows.rows([17, 5]).tolist(), rows.node_ids
    ([0, 1], [1, 2], [9223372036854775807, 17, 5])
    >>> rows.find(99) is None
    True
    """

    def __init__(self, capacity: int, node_ids: Iterable[int] = ()) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._index: dict[int, int] = {}
        self.rows(list(node_ids))

    def __len__(self) -> int:
        return len(self._index)

    @property
    def node_ids(self) -> list[int]:
        """The node ids seen so far, in row order."""
        return list(self._index)

    def find(self, node_id: int) -> int | None:
        """The row of ``node_id``, or ``None`` if it was never seen (allocates nothing)."""
        return self._index.get(int(node_id))

    def rows(self, node_ids: Sequence[int]) -> np.ndarray:
        """The rows of ``node_ids`` (distinct), allocating rows for new ones."""
        if len(set(node_ids)) != len(node_ids):
            raise ValueError(f"node ids must be distinct, got {list(node_ids)}")
        out = np.empty(len(node_ids), dtype=np.int64)
        for i, node_id in enumerate(node_ids):
            key = int(node_id)
            row = self._index.get(key)
            if row is None:
                if len(self._index) >= self.capacity:
                    raise ValueError(
                        f"node {key} is client number {len(self._index) + 1}, but num_clients is "
                        f"{self.capacity}: num_clients must count every client that can reply"
                    )
                row = self._index[key] = len(self._index)
            out[i] = row
        return out


class UpdateStore:
    """One vector per client as the rows of a ``(num_clients, parameters)`` tensor.

    Rows of clients never stored are zero. The tensor is allocated on ``device``
    at the first :meth:`swap`, when the number of parameters is known.

    >>> store = UpdateStore(4)
    >>> store.swap([70, 30], torch.tensor([[4.0, 0.0], [0.0, 8.0]])).tolist()
    [[0.0, 0.0], [0.0, 0.0]]
    >>> store.swap([30], torch.tensor([[1.0, 1.0]])).tolist(), store.mean_over_all(2).tolist()
    ([[0.0, 8.0]], [1.25, 0.25])
    """

    def __init__(self, num_clients: int, device: str | torch.device = "cpu") -> None:
        self.num_clients = num_clients
        self.device = torch.device(device)
        self.rows = ClientRows(num_clients)
        self.table: torch.Tensor | None = None

    def _table(self, size: int, dtype: torch.dtype) -> torch.Tensor:
        if self.table is None:
            self.table = torch.zeros((self.num_clients, size), dtype=dtype, device=self.device)
        if self.table.shape[1] != size:
            raise ValueError(f"stored vectors have {self.table.shape[1]} entries, got {size}")
        return self.table

    def swap(self, node_ids: Sequence[int], vectors: torch.Tensor) -> torch.Tensor:
        """Store ``vectors[i]`` as the row of ``node_ids[i]``; return the rows replaced.

        The rows of nodes never stored before come back as zeros.
        """
        rows = self.rows.rows(node_ids)
        table = self._table(vectors.shape[1], vectors.dtype)
        index = torch.from_numpy(rows).to(self.device)
        previous = table[index]
        table[index] = vectors.to(self.device, table.dtype)
        return previous

    def mean_over_all(self, size: int) -> torch.Tensor:
        """(1/N) Σ over all N clients of the stored rows (zero rows for clients never stored)."""
        if self.table is None:
            return torch.zeros(size, device=self.device)
        return self.table.sum(dim=0) / self.num_clients

    def state_dict(self) -> dict[str, Any]:
        """The node ids in row order and their rows (on the CPU)."""
        rows = None if self.table is None else self.table[: len(self.rows)].cpu().clone()
        return {"node_ids": self.rows.node_ids, "rows": rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, onto this store's device."""
        node_ids = [int(n) for n in state["node_ids"]]
        rows = state["rows"]
        if rows is not None and rows.shape[0] != len(node_ids):
            raise ValueError(f"{rows.shape[0]} stored rows for {len(node_ids)} node ids")
        self.rows = ClientRows(self.num_clients, node_ids)
        self.table = None
        if rows is not None:
            self._table(rows.shape[1], rows.dtype)[: len(node_ids)] = rows.to(self.device)


class StoredUpdatesStrategy(ServerUpdateStrategy):
    """A strategy keeping one update vector per client in an :class:`UpdateStore`.

    Needs ``num_clients`` (N, every client), which fedsim fills in; the store
    lives on the strategy's ``device`` and is part of :meth:`state_dict`.
    """

    def __init__(self, *, server_lr: float = 1.0, **options: Any) -> None:
        super().__init__(**options)
        if self.num_clients is None:
            raise ValueError(f"{type(self).__name__} needs num_clients (all clients)")
        self.server_lr = float(server_lr)
        self.store = UpdateStore(self.num_clients, self.device)

    def state_dict(self) -> dict[str, Any]:
        """The stored updates: node ids in row order and their rows (CPU tensor or None)."""
        return self.store.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"node_ids", "rows"}:
            raise ValueError(
                f"{type(self).__name__} state needs node_ids and rows, got {sorted(state)}"
            )
        self.store.load_state_dict(state)
