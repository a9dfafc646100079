"""Model arrays as one flat vector, so server math is a few tensor operations.

Flower carries a model as an ``ArrayRecord`` (name → array). Strategies that
weight, sum or store many client models work on them as rows of one
``(clients, parameters)`` tensor on the server device instead of dicts of
arrays in Python loops. :class:`Layout` remembers names, shapes and dtypes to
go back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord


@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of the arrays in a record, in record order.

    >>> record = ArrayRecord({"w": Array(np.ones((2, 2), np.float32)), "b": Array(np.zeros(3))})
    >>> layout = Layout.of(record)
    >>> layout.size, layout.to_record(layout.flatten(record)).keys() == record.keys()
    (7, True)
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @classmethod
    def of(cls, record: ArrayRecord) -> Layout:
        arrays = [record[name].numpy() for name in record]
        return cls(
            names=tuple(record.keys()),
            shapes=tuple(a.shape for a in arrays),
            dtypes=tuple(a.dtype for a in arrays),
        )

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(shape)) for shape in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def flatten(self, record: ArrayRecord, device: str | torch.device = "cpu") -> torch.Tensor:
        """The record as one float32 vector (in this layout's order) on ``device``."""
        if tuple(record.keys()) != self.names:
            raise ValueError(f"record keys {list(record.keys())} differ from {list(self.names)}")
        parts = [np.asarray(record[name].numpy(), dtype=np.float32).ravel() for name in self.names]
        flat = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return torch.from_numpy(flat).to(device)

    def stack(
        self, records: Sequence[ArrayRecord], device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """Several records as the rows of one ``(len(records), size)`` tensor."""
        if not records:
            return torch.zeros((0, self.size), device=device)
        return torch.stack([self.flatten(record, device) for record in records])

    def to_record(self, vector: torch.Tensor) -> ArrayRecord:
        """Back to an ``ArrayRecord``; integer arrays (e.g. BatchNorm counters) are rounded."""
        flat = vector.detach().to("cpu", torch.float32).numpy()
        arrays: dict[str, Array] = {}
        offset = 0
        for name, shape, dtype, size in zip(
            self.names, self.shapes, self.dtypes, self.sizes, strict=True
        ):
            chunk = flat[offset : offset + size].reshape(shape)
            offset += size
            if np.issubdtype(dtype, np.integer):
                chunk = np.rint(chunk)
            arrays[name] = Array(np.asarray(chunk.astype(dtype)).reshape(shape))
        return ArrayRecord(arrays)
