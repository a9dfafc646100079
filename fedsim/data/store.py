"""The partitioned data of every client, on disk once, memory-mapped by every actor.

The driver partitions the data set once and writes it here; each Ray actor then opens the
store and reads only the rows of the clients it serves, straight from the page cache. Nothing
is shipped per message and nothing is copied per actor, which is what lets a run simulate
100 000 clients: the layout has no per-client files and opening it creates no per-client
Python objects.

Layout of the folder (all ``.npy``, client-sorted, client ``k`` owning rows
``offsets[k]:offsets[k + 1]``)::

    meta.json                      format version, data set name, counts, shapes
    train_x.npy  train_y.npy  train_offsets.npy     local training data, offsets (N + 1,)
    test_x.npy   test_y.npy   test_offsets.npy      local evaluation data (may be empty)
    central_x.npy  central_y.npy                    the data set's test split
    label_counts.npy                                training examples per (client, class)

The folder is written into a temporary sibling and renamed into place, so a crash or an
error while writing never leaves a half-written store behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.datasets import Dataset
from fedsim.data.partition import label_counts

FORMAT_VERSION = 1
META_FILE = "meta.json"
ARRAY_NAMES = (
    "train_x",
    "train_y",
    "train_offsets",
    "test_x",
    "test_y",
    "test_offsets",
    "central_x",
    "central_y",
    "label_counts",
)
_CHUNK_BYTES = 64 << 20  # rows are gathered into the output files this many bytes at a time


class ClientDataStore:
    """Read access to a written store; every array is a read-only memory map.

    >>> import tempfile
    >>> from fedsim.data.datasets import Dataset
    >>> data = Dataset("toy", np.arange(8, dtype=np.float32).reshape(4, 2),
    ...                np.array([0, 1, 1, 0]), np.zeros((1, 2), np.float32), np.array([1]), 2)
    >>> scratch = tempfile.TemporaryDirectory()
    >>> folder = Path(scratch.name) / "store"
    >>> store = ClientDataStore.write(folder, data, [np.array([0, 2]), np.array([1, 3])])
    >>> store.num_clients, store.train(1)[1].tolist(), store.label_counts().tolist()
    (2, [1, 0], [[1, 1], [1, 1]])
    >>> del store; scratch.cleanup()
    """

    def __init__(self, directory: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.directory = directory
        self.num_clients: int = int(meta["num_clients"])
        self.num_classes: int = int(meta["num_classes"])
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in meta["input_shape"])
        self.dataset_name: str = str(meta["dataset"])
        self._arrays = arrays

    @classmethod
    def write(
        cls,
        directory: Path,
        dataset: Dataset,
        train_parts: Sequence[np.ndarray],
        test_parts: Sequence[np.ndarray] | None = None,
    ) -> ClientDataStore:
        """Write the clients' data (indices into ``dataset.x_train``) and open the result.

        ``test_parts`` are the clients' local evaluation indices (none when omitted). An
        existing store at ``directory`` is replaced only once the new one is complete.
        """
        directory = Path(directory)
        if test_parts is None:
            test_parts = [np.empty(0, dtype=np.int64)] * len(train_parts)
        if len(test_parts) != len(train_parts):
            raise ValueError(f"{len(train_parts)} train parts but {len(test_parts)} test parts")
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            _write_rows(staging, "train", dataset, train_parts)
            _write_rows(staging, "test", dataset, test_parts)
            np.save(staging / "central_x.npy", np.asarray(dataset.x_test, dtype=np.float32))
            np.save(staging / "central_y.npy", np.asarray(dataset.y_test, dtype=np.int64))
            counts = label_counts(dataset.y_train, train_parts, dataset.num_classes)
            np.save(staging / "label_counts.npy", counts)
            meta = {
                "format": FORMAT_VERSION,
                "dataset": dataset.name,
                "num_clients": len(train_parts),
                "num_classes": dataset.num_classes,
                "input_shape": list(dataset.input_shape),
            }
            (staging / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
            _move_into_place(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls.open(directory)

    @classmethod
    def open(cls, directory: Path) -> ClientDataStore:
        """Open a written store: reads ``meta.json`` and maps the arrays, nothing more."""
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{directory}: unknown client data format {meta.get('format')!r}")
        arrays = {
            name: np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            for name in ARRAY_NAMES
        }
        return cls(directory, meta, arrays)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (e.g. to a Ray actor) as its path: the receiver maps the files itself.
        return (ClientDataStore.open, (self.directory,))

    def _rows(self, split: str, client: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= client < self.num_clients:
            raise IndexError(f"client {client} out of range [0, {self.num_clients})")
        offsets = self._arrays[f"{split}_offsets"]
        start, end = int(offsets[client]), int(offsets[client + 1])
        return self._arrays[f"{split}_x"][start:end], self._arrays[f"{split}_y"][start:end]

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every client's rows of ``split`` ("train" or "test"): inputs, labels and the
        offsets (N + 1,) at which each client's rows begin (memory-mapped, not copied)."""
        return (
            self._arrays[f"{split}_x"],
            self._arrays[f"{split}_y"],
            self._arrays[f"{split}_offsets"],
        )

    def train(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """The client's local training inputs and labels (read-only memory-mapped slices)."""
        return self._rows("train", client)

    def test(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """The client's local evaluation inputs and labels (empty without a local split)."""
        return self._rows("test", client)

    def num_train_examples(self) -> np.ndarray:
        """Training examples per client, int64 (N,)."""
        return np.diff(self._arrays["train_offsets"])

    def num_test_examples(self) -> np.ndarray:
        """Local evaluation examples per client, int64 (N,)."""
        return np.diff(self._arrays["test_offsets"])

    def label_counts(self) -> np.ndarray:
        """Training examples per client and class, int64 (N, C)."""
        return self._arrays["label_counts"]

    def central_test(self) -> tuple[np.ndarray, np.ndarray]:
        """The data set's own test split (inputs, labels), for server-side evaluation."""
        return self._arrays["central_x"], self._arrays["central_y"]


def _write_rows(folder: Path, split: str, dataset: Dataset, parts: Sequence[np.ndarray]) -> None:
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    order = (
        np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
        if len(parts)
        else np.empty(0, dtype=np.int64)
    )
    np.save(folder / f"{split}_offsets.npy", offsets)
    np.save(folder / f"{split}_y.npy", np.asarray(dataset.y_train, dtype=np.int64)[order])
    x = dataset.x_train
    out = np.lib.format.open_memmap(
        folder / f"{split}_x.npy", mode="w+", dtype=np.float32, shape=(len(order), *x.shape[1:])
    )
    row_bytes = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * 4)
    step = max(1, _CHUNK_BYTES // row_bytes)
    for start in range(0, len(order), step):
        out[start : start + step] = x[order[start : start + step]]
    out.flush()
    del out


def _move_into_place(staging: Path, directory: Path) -> None:
    if not directory.exists():
        os.replace(staging, directory)
        return
    # os.replace cannot overwrite a non-empty folder: move the old one aside first.
    retired = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex}")
    os.replace(directory, retired)
    os.replace(staging, directory)
    shutil.rmtree(retired, ignore_errors=True)
