"""The client data store: round trip, memory mapping, atomic writes, 100 000 clients."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from fedsim.data import store as client_data
from fedsim.data.datasets import Dataset
from fedsim.data.store import ClientDataStore


def toy_dataset(n: int = 12, shape: tuple[int, ...] = (2, 3)) -> Dataset:
    x = np.arange(n * int(np.prod(shape)), dtype=np.float32).reshape(n, *shape)
    y = np.arange(n, dtype=np.int64) % 3
    return Dataset("toy", x, y, x[:2] + 0.5, np.array([2, 1]), num_classes=4)


TRAIN = [np.array([0, 3, 4]), np.array([], dtype=np.int64), np.array([1, 2, 5, 6, 7])]
TEST = [np.array([8]), np.array([9, 10]), np.array([], dtype=np.int64)]


def test_round_trip(tmp_path: Path) -> None:
    data = toy_dataset()
    ClientDataStore.write(tmp_path / "store", data, TRAIN, TEST)
    store = ClientDataStore.open(tmp_path / "store")
    assert (store.num_clients, store.num_classes, store.input_shape) == (3, 4, (2, 3))
    for client in range(3):
        x, y = store.train(client)
        assert np.array_equal(x, data.x_train[TRAIN[client]])
        assert np.array_equal(y, data.y_train[TRAIN[client]])
        x, y = store.test(client)
        assert np.array_equal(x, data.x_train[TEST[client]])
        assert np.array_equal(y, data.y_train[TEST[client]])
    assert store.train(1)[0].shape == (0, 2, 3)
    assert store.num_train_examples().tolist() == [3, 0, 5]
    assert store.num_test_examples().tolist() == [1, 2, 0]
    # labels: 0,0,1 | - | 1,2,2,0,1
    assert store.label_counts().tolist() == [[2, 1, 0, 0], [0, 0, 0, 0], [1, 2, 2, 0]]
    x_test, y_test = store.central_test()
    assert np.array_equal(x_test, data.x_test) and y_test.tolist() == [2, 1]


def test_without_local_test_parts(tmp_path: Path) -> None:
    store = ClientDataStore.write(tmp_path / "store", toy_dataset(), TRAIN)
    assert store.num_test_examples().tolist() == [0, 0, 0]
    assert store.test(2)[0].shape == (0, 2, 3)


def test_open_maps_the_arrays_without_reading_them(tmp_path: Path) -> None:
    ClientDataStore.write(tmp_path / "store", toy_dataset(), TRAIN, TEST)
    store = ClientDataStore.open(tmp_path / "store")
    x, y = store.train(2)
    assert isinstance(x, np.memmap) and isinstance(y, np.memmap)
    assert not x.flags.writeable
    assert all(isinstance(a, np.memmap) for a in store.central_test())
    assert isinstance(store.label_counts(), np.memmap)


def test_chunked_gather_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_data, "_CHUNK_BYTES", 50)  # two rows of 6 floats per chunk
    data = toy_dataset(40)
    parts = [np.arange(40)[::-1][i::3] for i in range(3)]
    store = ClientDataStore.write(tmp_path / "store", data, parts)
    for client, part in enumerate(parts):
        assert np.array_equal(store.train(client)[0], data.x_train[part])


def test_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(client_data, "label_counts", explode)  # after the arrays are written
    with pytest.raises(RuntimeError, match="disk full"):
        ClientDataStore.write(tmp_path / "store", toy_dataset(), TRAIN, TEST)
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ClientDataStore.write(tmp_path / "store", toy_dataset(), TRAIN, TEST)

    def explode(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(client_data, "label_counts", explode)
    with pytest.raises(RuntimeError):
        ClientDataStore.write(tmp_path / "store", toy_dataset(), [np.arange(12)], [np.arange(0)])
    assert [p.name for p in tmp_path.iterdir()] == ["store"]
    assert ClientDataStore.open(tmp_path / "store").num_clients == 3


def test_rewrite_replaces_the_store(tmp_path: Path) -> None:
    ClientDataStore.write(tmp_path / "store", toy_dataset(), TRAIN, TEST)
    store = ClientDataStore.write(tmp_path / "store", toy_dataset(), [np.arange(12)])
    assert store.num_clients == 1 and store.num_train_examples().tolist() == [12]
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_pickles_as_its_path(tmp_path: Path) -> None:
    store = ClientDataStore.write(tmp_path / "store", toy_dataset(), TRAIN, TEST)
    payload = pickle.dumps(store)
    assert len(payload) < 500  # the path, not the data
    again = pickle.loads(payload)
    assert np.array_equal(again.train(2)[1], store.train(2)[1])


def test_client_out_of_range(tmp_path: Path) -> None:
    store = ClientDataStore.write(tmp_path / "store", toy_dataset(), TRAIN, TEST)
    with pytest.raises(IndexError, match=r"client 3 out of range \[0, 3\)"):
        store.train(3)


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    ClientDataStore.write(tmp_path / "store", toy_dataset(), TRAIN, TEST)
    meta = tmp_path / "store" / "meta.json"
    meta.write_text(meta.read_text().replace('"format": 1', '"format": 99'))
    with pytest.raises(ValueError, match="unknown client data format 99"):
        ClientDataStore.open(tmp_path / "store")


def test_hundred_thousand_clients_open_fast(tmp_path: Path) -> None:
    num_clients = 100_000
    n = 2 * num_clients
    x = np.arange(n, dtype=np.float32)[:, None]
    data = Dataset("tiny", x, np.arange(n) % 10, x[:5], np.zeros(5, np.int64), num_classes=10)
    parts = [np.array([2 * k, 2 * k + 1]) for k in range(num_clients)]
    ClientDataStore.write(tmp_path / "store", data, parts)
    start = time.perf_counter()
    store = ClientDataStore.open(tmp_path / "store")
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5
    assert store.num_clients == num_clients
    assert store.train(99_999)[0].ravel().tolist() == [199_998.0, 199_999.0]
    assert store.label_counts().shape == (num_clients, 10)
    assert len(list((tmp_path / "store").iterdir())) == 10  # no per-client files
