"""Model arrays as one flat vector, so server math is a few tensor operations.

Flower carries a model as an ``ArrayRecord`` (name → array). Strategies that
weight, sum or store many client models work on them as rows of one
``(clients, parameters)`` tensor on the server device instead of dicts of
arrays in Python loops. :class:`Layout` remembers names, shapes and dtypes to
go back.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType

from fedsim.records import array_record

T = TypeVar("T")

_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-ordered array (cached per shape)."""
    key = (dtype.str, shape)
    if key not in _NPY_HEADERS:
        buffer = io.BytesIO()
        np.save(buffer, np.empty(shape, dtype), allow_pickle=False)
        data = buffer.getvalue()
        _NPY_HEADERS[key] = data[: len(data) - math.prod(shape) * dtype.itemsize]
    return _NPY_HEADERS[key]


def numpy_to_array(ndarray: np.ndarray) -> Array:
    """``Array(ndarray)`` with the same bytes, without ``np.save``'s per-call header work.

    >>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> numpy_to_array(a).data == Array(a).data
    True
    """
    if not ndarray.flags.c_contiguous or ndarray.dtype.hasobject:
        return Array(ndarray)
    shape = tuple(int(d) for d in ndarray.shape)
    data = b"".join((_npy_header(ndarray.dtype, shape), ndarray.data))
    return Array(dtype=ndarray.dtype.name, shape=shape, stype=SType.NUMPY, data=data)


class Block:
    """A cohort's models as one ``(clients, parameters)`` float32 tensor, left where the
    cohort trained it (on the GPU, say), with a host copy made once, on first need.

    An aggregation on the same device reads the rows there (:meth:`Layout.stack`): a
    round's models then never leave the GPU. Anything that reads the bytes (a Flower
    strategy, a pickle to the Ray driver) gets them from the one host copy.

    >>> block = Block(torch.arange(6, dtype=torch.float32).reshape(2, 3))
    >>> block.shape, block.dtype.name, block.host()[1].tolist()
    ((2, 3), 'float32', [3.0, 4.0, 5.0])
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor.detach()
        self._host: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(str(self.tensor.dtype).removeprefix("torch."))

    @property
    def nbytes(self) -> int:
        return self.tensor.nelement() * self.tensor.element_size()

    def host(self) -> np.ndarray:
        """The block in host memory (a view of the tensor when it is there already)."""
        if self._host is None:
            self._host = np.ascontiguousarray(self.tensor.cpu().numpy())
        return self._host

    def on(self, device: torch.device) -> bool:
        """Whether the block's tensor is on ``device`` (``cuda`` matches ``cuda:0``...)."""
        here = self.tensor.device
        return here.type == device.type and device.index in (None, here.index)


def _host(block: np.ndarray | Block) -> np.ndarray:
    return block.host() if isinstance(block, Block) else block


class RowArray(Array):
    """An ``Array`` that is a slice of one row of a shared ``(clients, parameters)`` block.

    A cohort's replies (:mod:`fedsim.client.app`) are rows of one stacked :class:`Block`:
    giving every reply's array its own bytes would copy the whole cohort (110 MB a
    round for 50 CIFAR CNNs) only for the strategy to copy it back into rows. A
    RowArray makes its bytes on first use of ``data`` (the very bytes of
    ``Array(ndarray)``), and :meth:`Layout.stack` takes the block's rows without them.
    Pickled (a Ray actor's replies to the driver), the arrays of one call carry their
    block once, out of band; copied, a RowArray becomes a plain ``Array``.

    >>> block = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> array = RowArray(block, 1, 1, (2,))
    >>> array.numpy().tolist(), array.data == Array(np.array([4.0, 5.0], np.float32)).data
    ([4.0, 5.0], True)
    """

    def __init__(  # Array's fields, set without building the bytes
        self,
        block: np.ndarray | Block,
        row: int,
        start: int,
        shape: tuple[int, ...],
        dtype: str | None = None,
    ) -> None:
        dtype = dtype or block.dtype.name  # given by callers that make many of one block
        self.__dict__.update(dtype=dtype, shape=tuple(shape), stype=SType.NUMPY)
        self.__dict__["_slice"] = (block, row, start, math.prod(shape))

    @property
    def data(self) -> bytes:  # type: ignore[override]
        if "_data" not in self.__dict__:
            values = self.values()
            self.__dict__["_data"] = b"".join((_npy_header(values.dtype, self.shape), values.data))
        data: bytes = self.__dict__["_data"]
        return data

    @property
    def block(self) -> tuple[np.ndarray | Block, int, int]:
        """(the block, this array's row, its first column)."""
        block, row, start, _ = self.__dict__["_slice"]
        return block, row, start

    def values(self) -> np.ndarray:
        """The array as a read-only view of the block."""
        block, row, start, size = self.__dict__["_slice"]
        view = _host(block)[row, start : start + size].reshape(self.shape).view()
        view.flags.writeable = False
        return view

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        block, row, start, _ = self.__dict__["_slice"]
        return (RowArray, (_host(block), row, start, self.shape))

    def __copy__(self) -> Array:
        return Array(self.dtype, self.shape, self.stype, self.data)

    def __deepcopy__(self, memo: dict[int, object]) -> Array:
        return self.__copy__()


def rows_to_records(
    block: np.ndarray | Block, names: Sequence[str], shapes: Sequence[tuple[int, ...]]
) -> list[ArrayRecord]:
    """One ``ArrayRecord`` per row of ``block``, its arrays :class:`RowArray` slices of the
    row (``names`` and ``shapes`` in the row's order).

    >>> records = rows_to_records(np.arange(6, dtype=np.float32).reshape(2, 3), ["w", "b"],
    ...                           [(2,), ()])
    >>> records[1]["w"].numpy().tolist(), float(records[1]["b"].numpy())
    ([3.0, 4.0], 5.0)
    """
    if not isinstance(block, Block):
        block = np.ascontiguousarray(block)
    starts = np.cumsum([0] + [math.prod(shape) for shape in shapes]).tolist()
    dtype = block.dtype.name
    layout = list(zip(names, shapes, starts, strict=False))
    return [
        array_record(
            (name, RowArray(block, row, start, shape, dtype)) for name, shape, start in layout
        )
        for row in range(block.shape[0])
    ]


def array_to_numpy(array: Array) -> np.ndarray:
    """``array.numpy()`` as a read-only view of its bytes (no header parsing, no copy).

    Anything but a C-ordered ``.npy`` of a plain dtype goes through ``array.numpy()``.

    >>> a = np.arange(6, dtype=np.int64).reshape(3, 2)
    >>> view = array_to_numpy(Array(a))
    >>> bool((view == a).all()), view.dtype, view.flags.writeable
    (True, dtype('int64'), False)
    """
    if isinstance(array, RowArray):
        return array.values()
    if array.stype == SType.NUMPY:
        try:
            dtype = np.dtype(array.dtype)
        except TypeError:
            return array.numpy()
        shape = tuple(int(d) for d in array.shape)
        offset = len(array.data) - math.prod(shape) * dtype.itemsize
        if not dtype.hasobject and offset > 0 and array.data[:offset] == _npy_header(dtype, shape):
            return np.frombuffer(array.data, dtype=dtype, offset=offset).reshape(shape)
    return array.numpy()


# Rows of at least this many bytes are filled by up to _COPY_THREADS threads (numpy's
# copies release the GIL).
_PARALLEL_BYTES = 16 << 20
_COPY_THREADS = min(8, os.cpu_count() or 1)


def copy_in_parallel(copy: Callable[[int], T], count: int, nbytes: int) -> list[T]:
    """``[copy(0), ..., copy(count - 1)]``, on a few threads when they move ``nbytes`` of
    at least 16 MiB in all (numpy's copies release the GIL).

    >>> copy_in_parallel(lambda i: i * i, 4, nbytes=0), copy_in_parallel(str, 3, nbytes=1 << 30)
    ([0, 1, 4, 9], ['0', '1', '2'])
    """
    if nbytes < _PARALLEL_BYTES or count < 2 or _COPY_THREADS < 2:
        return [copy(index) for index in range(count)]
    with ThreadPoolExecutor(min(_COPY_THREADS, count)) as pool:
        return list(pool.map(copy, range(count)))


class _HostRows:
    """One host buffer per process for rows on their way to an accelerator, pinned so that
    the transfer runs at full speed, and reused so that its pages are not faulted in anew
    every round."""

    buffer: torch.Tensor | None = None

    @classmethod
    def take(cls, count: int, size: int) -> torch.Tensor:
        needed = count * size
        if cls.buffer is None or cls.buffer.numel() < needed:
            pin = torch.cuda.is_available()
            cls.buffer = torch.empty(max(needed, 1), dtype=torch.float32, pin_memory=pin)
        return cls.buffer[:needed].view(count, size)


@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of the arrays in a record, in record order.

    >>> record = ArrayRecord({"w": Array(np.ones((2, 2), np.float32)), "n": Array(np.array(3))})
    >>> layout = Layout.of(record)
    >>> back = layout.to_record(layout.flatten(record))
    >>> layout.size, back.keys() == record.keys(), back["n"].numpy().shape, back["n"].dtype
    (5, True, (), 'int64')
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @classmethod
    def of(cls, record: ArrayRecord) -> Layout:
        arrays = [array_to_numpy(record[name]) for name in record]
        return cls(
            names=tuple(record.keys()),
            shapes=tuple(a.shape for a in arrays),
            dtypes=tuple(a.dtype for a in arrays),
        )

    @functools.cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @functools.cached_property
    def size(self) -> int:
        return sum(self.sizes)

    @functools.cached_property
    def bounds(self) -> tuple[tuple[int, int], ...]:
        """Each tensor's ``[start, stop)`` columns in the flat vector: the one place the
        strategies' views of a model's parts (variance correction's segments, FedLAW's
        parameter/buffer split, L-DAWA's layers) derive from.

        >>> Layout(("w", "b"), ((2, 3), (3,)), (np.dtype("float32"),) * 2).bounds
        ((0, 6), (6, 9))
        """
        starts = [0, *itertools.accumulate(self.sizes)]
        return tuple(itertools.pairwise(starts))

    def flatten(self, record: ArrayRecord, device: str | torch.device = "cpu") -> torch.Tensor:
        """The record as one float32 vector (in this layout's order) on ``device``."""
        return self.stack([record], device)[0]

    def stack(
        self, records: Sequence[ArrayRecord], device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """Several records as the rows of one ``(len(records), size)`` float32 tensor.

        Each array is read in place from its bytes and copied once, into the rows; for an
        accelerator the rows are a reused pinned host buffer, filled by a few threads
        when large (a round of 50 CIFAR CNNs is 110 MB), then sent in one transfer.
        """
        for record in records:
            if tuple(record.keys()) != self.names:
                raise ValueError(
                    f"record keys {list(record.keys())} differ from {list(self.names)}"
                )
        target = torch.device(device)
        if target.type == "cpu":
            rows_tensor = torch.from_numpy(np.empty((len(records), self.size), np.float32))
        else:
            rows_tensor = _HostRows.take(len(records), self.size)
        rows = rows_tensor.numpy()
        shared = self._shared_block(records)
        if shared is not None:  # a cohort's replies: one gather of the block's rows
            block, picked = shared
            if isinstance(block, Block) and block.on(target) and target.type != "cpu":
                return block.tensor.index_select(0, torch.tensor(picked, device=target))
            # mode="clip": the rows are valid, and "raise" would buffer the whole output.
            np.take(_host(block), picked, axis=0, out=rows, mode="clip")
            return rows_tensor if target.type == "cpu" else rows_tensor.to(target)

        def fill(index: int) -> None:
            row, record, offset = rows[index], records[index], 0
            for name, size in zip(self.names, self.sizes, strict=True):
                np.copyto(
                    row[offset : offset + size],
                    array_to_numpy(record[name]).reshape(-1),
                    casting="unsafe",
                )
                offset += size

        copy_in_parallel(fill, len(records), rows.nbytes)
        # From the reused buffer the copy is synchronous: the next round may refill it.
        return rows_tensor if target.type == "cpu" else rows_tensor.to(target)

    def _shared_block(
        self, records: Sequence[ArrayRecord]
    ) -> tuple[np.ndarray | Block, list[int]] | None:
        """(block, row of each record) when every array of ``records`` is a
        :class:`RowArray` of one float32 block laid out as this layout; else None."""
        starts = np.cumsum((0, *self.sizes)).tolist()
        block: np.ndarray | Block | None = None
        picked: list[int] = []
        for record in records:
            row: int | None = None
            for name, shape, start in zip(self.names, self.shapes, starts, strict=False):
                array = record[name]
                if not isinstance(array, RowArray) or array.shape != shape:
                    return None
                its_block, its_row, its_start = array.block
                block = its_block if block is None else block
                row = its_row if row is None else row
                if its_block is not block or its_row != row or its_start != start:
                    return None
            if row is None:
                return None
            picked.append(row)
        if block is None or block.dtype != np.float32 or block.shape[1] != self.size:
            return None
        return block, picked

    def to_record(self, vector: torch.Tensor) -> ArrayRecord:
        """Back to an ``ArrayRecord``; integer arrays (e.g. BatchNorm counters) are rounded."""
        flat = vector.detach().to("cpu", torch.float32).numpy()
        record = ArrayRecord()
        offset = 0
        for name, shape, dtype, size in zip(
            self.names, self.shapes, self.dtypes, self.sizes, strict=True
        ):
            chunk = flat[offset : offset + size].reshape(shape)
            offset += size
            if np.issubdtype(dtype, np.integer):
                chunk = np.rint(chunk)
            record[name] = numpy_to_array(np.asarray(chunk, dtype=dtype))  # 0-d stays 0-d
        return record
