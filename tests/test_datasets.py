"""Data set loaders: generated sets, every file format on small files written here, errors."""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.interpolate import interp1d

from fedsim.data import mnist1d
from fedsim.data.datasets import DATASET_NAMES, DATASET_OPTIONS, Dataset, load_dataset
from fedsim.data.partition import holdout_size
from fedsim.errors import ScenarioError


def load(name: str, options: dict[str, Any] | None = None, **kwargs: Any) -> Dataset:
    settings: dict[str, Any] = {
        "seed": 0,
        "num_clients": 4,
        "test_fraction": 0.2,
        "source": "run.toml",
        "base_dir": Path("."),
    }
    settings.update(kwargs)
    return load_dataset(name, options or {}, **settings)


def error_of(name: str, options: dict[str, Any] | None = None, **kwargs: Any) -> str:
    with pytest.raises(ScenarioError) as error:
        load(name, options, **kwargs)
    return str(error.value)


def test_every_dataset_declares_its_options() -> None:
    assert set(DATASET_NAMES) == set(DATASET_OPTIONS)


# --- digits -------------------------------------------------------------------------------


def test_digits_shapes_range_and_stratified_holdout() -> None:
    from sklearn.datasets import load_digits

    data = load("digits")
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    per_class = np.bincount(load_digits().target)
    expected = [holdout_size(int(n), 0.2) for n in per_class]
    assert np.bincount(data.y_test).tolist() == expected
    assert len(data.y_train) + len(data.y_test) == 1797


def test_digits_split_depends_on_the_seed_only() -> None:
    a, b, c = load("digits", seed=1), load("digits", seed=1), load("digits", seed=2)
    assert np.array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test)


def test_digits_takes_no_options() -> None:
    assert error_of("digits", {"foo": 1}) == (
        "run.toml: data.foo: expected a key that dataset 'digits' takes "
        "(none besides the common [data] keys)"
    )


def test_unknown_dataset() -> None:
    assert error_of("imagenet") == (
        "run.toml: data.dataset: expected one of digits, mnist1d, synthetic, mnist, "
        "fashion-mnist, cifar10, cifar100, npz, huggingface, got 'imagenet'"
    )


# --- mnist1d ------------------------------------------------------------------------------


def test_mnist1d_default_shapes_balance_and_standardisation() -> None:
    data = load("mnist1d")
    assert data.x_train.shape == (4000, 1, 40) and data.x_test.shape == (1000, 1, 40)
    labels = np.concatenate([data.y_train, data.y_test])
    assert np.bincount(labels).tolist() == [500] * 10
    everything = np.concatenate([data.x_train, data.x_test])
    assert abs(float(everything.mean())) < 1e-5 and abs(float(everything.std()) - 1) < 1e-5


def test_mnist1d_seeding() -> None:
    a, b, c = load("mnist1d", seed=3), load("mnist1d", seed=3), load("mnist1d", seed=4)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    fixed = [load("mnist1d", {"data_seed": 7}, seed=s) for s in (3, 4)]
    assert np.array_equal(fixed[0].x_train, fixed[1].x_train)


def test_mnist1d_options() -> None:
    data = load(
        "mnist1d",
        {"num_samples": 205, "final_seq_length": 20, "shuffle_seq": True, "padding": [10, 12]},
        test_fraction=0.25,
    )
    assert data.x_train.shape == (150, 1, 20) and data.x_test.shape == (50, 1, 20)


def test_mnist1d_option_errors() -> None:
    assert error_of("mnist1d", {"num_samples": "many"}) == (
        "run.toml: data.num_samples: expected an integer >= 10, got 'many'"
    )
    assert error_of("mnist1d", {"padding": [5, 2]}) == (
        "run.toml: data.padding: expected two integers [low, high] with 0 <= low <= high, "
        "got [5, 2]"
    )
    assert error_of("mnist1d", {"padding": [0, 10], "max_translation": 30}) == (
        "run.toml: data.max_translation: expected an integer <= 22 (12 + padding high), got 30"
    )
    assert error_of("mnist1d", {"shear_scale": -1}) == (
        "run.toml: data.shear_scale: expected a number >= 0.0, got -1"
    )
    assert error_of("mnist1d", {"nosie": 1}) == (
        "run.toml: data.nosie: expected a key that dataset 'mnist1d' takes (corr_noise_scale, "
        "data_seed, final_seq_length, iid_noise_scale, max_translation, num_samples, padding, "
        "scale_coeff, shear_scale, shuffle_seq)"
    )


def test_mnist1d_templates_are_whitened_and_anchored() -> None:
    t = mnist1d.templates()
    assert np.allclose(t[:, 0], 0) and np.allclose(t[:, -1], 0)
    assert np.allclose(t.std(axis=1), 1 / 6)


def test_mnist1d_resample_matches_scipy_interp1d() -> None:
    gen = np.random.default_rng(0)
    rows = gen.normal(size=(5, 30))
    lengths = np.array([2, 7, 12, 29, 30])
    ours = mnist1d.resample(rows, lengths, 17)
    for row, length, got in zip(rows, lengths, ours, strict=True):
        grid = np.linspace(0, 1, length)
        expected = interp1d(grid, row[:length], kind="linear")(np.linspace(0, 1, 17))
        assert np.allclose(got, expected, atol=1e-12)


def test_mnist1d_without_noise_is_a_shifted_scaled_template() -> None:
    args = mnist1d.MNIST1DArgs(
        num_samples=10,
        padding=(0, 0),
        scale_coeff=0.0,
        max_translation=1,
        corr_noise_scale=0.0,
        iid_noise_scale=0.0,
        shear_scale=0.0,
        final_seq_length=12,
    )
    x, y = mnist1d.generate(np.random.default_rng(0), args)
    expected = mnist1d.templates()[y] + 1e-8
    expected = (expected - expected.mean()) / expected.std()
    assert np.allclose(x, expected, atol=1e-5)


# --- synthetic ----------------------------------------------------------------------------


def test_synthetic_natural_partition_and_shapes() -> None:
    data = load("synthetic", num_clients=6, test_fraction=0.5)
    assert data.input_shape == (60,) and data.num_classes == 10
    assert data.natural_partition is not None and len(data.natural_partition) == 6
    joined = np.concatenate(data.natural_partition)
    assert np.array_equal(joined, np.arange(len(data.y_train)))
    # every client keeps at least 50 - holdout(50) = 25 training examples
    assert min(len(p) for p in data.natural_partition) >= 25
    assert len(data.y_test) >= 6 * 25
    assert data.y_train.max() < 10


def test_synthetic_without_holdout_keeps_every_example_for_training() -> None:
    data = load("synthetic", {"min_samples": 7}, num_clients=3, test_fraction=0.0)
    assert data.x_test.shape == (0, 60)
    assert data.natural_partition is not None
    assert min(len(p) for p in data.natural_partition) >= 7


def test_synthetic_seeding() -> None:
    a, b, c = (load("synthetic", seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.x_train, b.x_train)
    assert a.x_train.shape != c.x_train.shape or not np.array_equal(a.x_train, c.x_train)


def test_synthetic_feature_variances_follow_j_to_the_minus_1_2() -> None:
    data = load(
        "synthetic",
        {"samples_per_client": 2050, "samples_sigma": 0.0, "dimension": 8},
        num_clients=1,
        test_fraction=0.0,
    )
    assert len(data.y_train) in (2049, 2050)  # floor(exp(log(2000))) + 50
    expected = np.arange(1, 9) ** -0.6
    assert np.allclose(data.x_train.std(axis=0), expected, rtol=0.08)


def test_synthetic_sample_counts_have_the_requested_mean() -> None:
    data = load(
        "synthetic",
        {"samples_per_client": 50.0, "samples_sigma": 0.5, "min_samples": 5, "dimension": 2},
        num_clients=2000,
        test_fraction=0.0,
    )
    assert data.natural_partition is not None
    mean = np.mean([len(p) for p in data.natural_partition])
    assert abs(mean - 49.5) < 3  # E[floor(LogNormal)] + 5 is about 50 - 0.5


def test_synthetic_iid_shares_one_input_distribution() -> None:
    def spread(iid: bool) -> float:
        data = load("synthetic", {"iid": iid, "beta": 1.0}, num_clients=20, test_fraction=0.0)
        assert data.natural_partition is not None
        means = [data.x_train[p, 0].mean() for p in data.natural_partition]
        return float(np.std(means))

    assert spread(True) < 0.25 < spread(False)


def test_synthetic_labels_come_from_linear_models() -> None:
    from sklearn.linear_model import LogisticRegression

    def linear_fit(iid: bool) -> float:
        options = {"iid": iid, "dimension": 10, "samples_per_client": 150, "samples_sigma": 0.0}
        data = load("synthetic", options, num_clients=30, test_fraction=0.0)
        model = LogisticRegression(C=1e4, max_iter=3000).fit(data.x_train, data.y_train)
        return float(model.score(data.x_train, data.y_train))

    assert linear_fit(iid=True) > 0.99  # one shared linear model labels every client
    assert linear_fit(iid=False) < 0.8  # 30 different ones do not fit a single model


def test_synthetic_option_errors() -> None:
    assert error_of("synthetic", {"samples_per_client": 40}) == (
        "run.toml: data.samples_per_client: expected a number > 50.0, got 40"
    )
    assert error_of("synthetic", {"iid": 1}) == "run.toml: data.iid: expected true or false, got 1"
    assert error_of("synthetic", {"dimension": 2.5}) == (
        "run.toml: data.dimension: expected an integer >= 1, got 2.5"
    )


# --- IDX (mnist, fashion-mnist) -----------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(">u1").tobytes()


def write_idx_folder(folder: Path, compress: bool, dotted: bool = False) -> dict[str, np.ndarray]:
    gen = np.random.default_rng(0)
    arrays = {
        "train-images": gen.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels": np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8),
        "t10k-images": gen.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels": np.array([5, 6, 7], dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        kind = "idx3" if stem.endswith("images") else "idx1"
        name = f"{stem}.{kind}-ubyte" if dotted else f"{stem}-{kind}-ubyte"
        data = idx_bytes(array)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_plain_and_gz(tmp_path: Path, compress: bool) -> None:
    arrays = write_idx_folder(tmp_path / "mnist", compress)
    data = load("mnist", {"path": "mnist"}, base_dir=tmp_path)
    assert data.x_train.shape == (6, 1, 28, 28) and data.x_test.shape == (3, 1, 28, 28)
    assert np.allclose(data.x_train[:, 0] * 255, arrays["train-images"])
    assert data.y_train.tolist() == [0, 1, 2, 3, 4, 9] and data.y_test.tolist() == [5, 6, 7]
    assert data.x_train.dtype == np.float32 and 0 <= data.x_train.min() <= data.x_train.max() <= 1


def test_fashion_mnist_dotted_names_in_a_torchvision_layout(tmp_path: Path) -> None:
    write_idx_folder(tmp_path / "FashionMNIST" / "raw", compress=True, dotted=True)
    data = load("fashion-mnist", {"path": str(tmp_path)})
    assert data.name == "fashion-mnist" and len(data.y_train) == 6


def test_mnist_errors(tmp_path: Path) -> None:
    assert error_of("mnist") == (
        "run.toml: data.path: expected a path to a folder with the four IDX files "
        "(train-images-idx3-ubyte, ...) (required for dataset 'mnist')"
    )
    assert error_of("mnist", {"path": "nope"}, base_dir=tmp_path) == (
        "run.toml: data.path: expected a path to a folder with the four IDX files "
        f"(train-images-idx3-ubyte, ...), got '{tmp_path / 'nope'}'"
    )
    folder = tmp_path / "mnist"
    write_idx_folder(folder, compress=False)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    assert error_of("mnist", {"path": str(folder)}) == (
        "run.toml: data.path: expected a folder holding t10k-labels-idx1-ubyte "
        f"(or t10k-labels-idx1-ubyte.gz), got '{folder}'"
    )
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01")
    assert error_of("mnist", {"path": str(folder)}) == (
        "run.toml: data.path: expected valid IDX files (t10k-labels-idx1-ubyte: 9 bytes, its "
        f"header announces 13), got '{folder / 't10k-labels-idx1-ubyte'}'"
    )


# --- CIFAR (python pickles) ---------------------------------------------------------------


def write_pickle(path: Path, content: dict[bytes, Any]) -> None:
    with path.open("wb") as handle:
        pickle.dump(content, handle, protocol=2)


def test_cifar10_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    gen = np.random.default_rng(1)
    batches = [gen.integers(0, 256, (2, 3072), dtype=np.uint8) for _ in range(6)]
    for i in range(5):
        write_pickle(
            folder / f"data_batch_{i + 1}",
            {b"data": batches[i], b"labels": [i, 9 - i], b"batch_label": b"x"},
        )
    write_pickle(folder / "test_batch", {b"data": batches[5], b"labels": [3, 4]})
    data = load("cifar10", {"path": str(tmp_path)})  # the parent folder is accepted too
    assert data.x_train.shape == (10, 3, 32, 32) and data.x_test.shape == (2, 3, 32, 32)
    assert data.y_train.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5] and data.num_classes == 10
    raw = np.concatenate(batches[:5]).reshape(10, 3, 1024) / 255.0
    mean, std = raw.mean(axis=(0, 2)), raw.std(axis=(0, 2))
    # pixel (row 2, col 3) of channel 1 of the first test image, standardised with train stats
    expected = (batches[5][0, 1024 + 2 * 32 + 3] / 255.0 - mean[1]) / std[1]
    assert data.x_test[0, 1, 2, 3] == pytest.approx(expected, rel=1e-5)
    assert np.allclose(data.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert np.allclose(data.x_train.std(axis=(0, 2, 3)), 1, atol=1e-4)


def test_cifar10_missing_batch(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    write_pickle(folder / "data_batch_1", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
    assert error_of("cifar10", {"path": str(folder)}) == (
        f"run.toml: data.path: expected a folder holding the file data_batch_2, got '{folder}'"
    )


@pytest.mark.parametrize(
    ("mode", "classes", "labels"), [("fine", 100, [7, 99]), ("coarse", 20, [1, 19])]
)
def test_cifar100_label_modes(tmp_path: Path, mode: str, classes: int, labels: list[int]) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        content = {
            b"data": np.full((2, 3072), 128, np.uint8),
            b"fine_labels": [7, 99],
            b"coarse_labels": [1, 19],
        }
        write_pickle(folder / name, content)
    options: dict[str, Any] = {"path": str(folder)}
    if mode == "coarse":
        options["label_mode"] = "coarse"
    data = load("cifar100", options)
    assert data.num_classes == classes and data.y_test.tolist() == labels
    assert np.all(data.x_train == 0.0)  # a constant channel has std 0: centred, not divided


def test_cifar100_bad_label_mode(tmp_path: Path) -> None:
    assert error_of("cifar100", {"path": str(tmp_path), "label_mode": "medium"}) == (
        "run.toml: data.label_mode: expected one of fine, coarse, got 'medium'"
    )


# --- npz ----------------------------------------------------------------------------------


def test_npz_with_test_split(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.uint8).reshape(6, 2, 2)
    np.savez(
        tmp_path / "d.npz",
        x_train=x,
        y_train=np.array([0, 1, 2, 0, 1, 2]),
        x_test=x[:2],
        y_test=np.array([2.0, 4.0]),
    )
    data = load("npz", {"path": "d.npz"}, base_dir=tmp_path)
    assert data.x_train.dtype == np.float32 and np.array_equal(data.x_train, x)  # as is
    assert data.y_test.tolist() == [2, 4] and data.num_classes == 5
    assert load("npz", {"path": "d.npz", "num_classes": 8}, base_dir=tmp_path).num_classes == 8


def test_npz_without_test_split_holds_out(tmp_path: Path) -> None:
    labels = np.repeat([0, 1], 10)
    np.savez(tmp_path / "d.npz", x_train=np.zeros((20, 3)), y_train=labels)
    a = load("npz", {"path": str(tmp_path / "d.npz")}, test_fraction=0.3, seed=5)
    b = load("npz", {"path": str(tmp_path / "d.npz")}, test_fraction=0.3, seed=5)
    assert np.bincount(a.y_test).tolist() == [3, 3] and len(a.y_train) == 14
    assert np.array_equal(a.y_test, b.y_test)


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 2)), y_train=np.zeros(2))
    assert error_of("npz", {"path": str(tmp_path / "bad.npz")}) == (
        "run.toml: data.path: expected an .npz with x_train, y_train and optionally both x_test "
        "and y_test, got 'x, y_train'"
    )
    np.savez(tmp_path / "frac.npz", x_train=np.zeros((2, 2)), y_train=np.array([0.5, 1.0]))
    assert error_of("npz", {"path": str(tmp_path / "frac.npz")}) == (
        "run.toml: data.path: expected y_train: non-negative integer labels of shape (n,), "
        "got dtype('float64')"
    )
    np.savez(tmp_path / "ok.npz", x_train=np.zeros((2, 2)), y_train=np.array([0, 3]))
    assert error_of("npz", {"path": str(tmp_path / "ok.npz"), "num_classes": 3}) == (
        "run.toml: data.num_classes: expected an integer >= 4 (the largest label + 1), got 3"
    )
    assert error_of("npz", {"path": "missing.npz"}, base_dir=tmp_path) == (
        "run.toml: data.path: expected a path to an .npz file with x_train and y_train, "
        f"got '{tmp_path / 'missing.npz'}'"
    )


# --- Hugging Face (a fake `datasets` module exercises the conversion) ---------------------


class Image:
    """Stands in for datasets.Image (matched by its class name)."""


class ClassLabel:
    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes


class FakeSplit:
    def __init__(self, columns: dict[str, Any], features: dict[str, Any]) -> None:
        self.columns = columns
        self.features = features
        self.column_names = list(columns)

    def with_format(self, kind: str) -> FakeSplit:
        assert kind == "numpy"
        return self

    def __getitem__(self, key: str) -> Any:
        return self.columns[key]


def fake_datasets(splits: dict[str, FakeSplit]) -> tuple[types.ModuleType, list[Any]]:
    module = types.ModuleType("datasets")
    config = types.SimpleNamespace(HF_HUB_OFFLINE=False, HF_DATASETS_OFFLINE=False)
    calls: list[Any] = []

    def load_dataset(path: str, name: str | None = None, cache_dir: str | None = None) -> Any:
        calls.append((path, name, cache_dir, config.HF_HUB_OFFLINE, config.HF_DATASETS_OFFLINE))
        if path != "someone/tiny":
            raise FileNotFoundError(f"Couldn't find '{path}' on the Hub or in the cache\nmore")
        return splits

    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    module.config = config  # type: ignore[attr-defined]
    return module, calls


def image_split(n: int, labels: list[int], as_objects: bool = False) -> FakeSplit:
    images: Any = [np.full((5, 4, 3), 51 * i, np.uint8) for i in range(n)]  # decoded HWC
    if as_objects:  # how a numpy-formatted column of separately decoded images can come back
        column = np.empty(n, dtype=object)
        column[:] = images
        images = column
    return FakeSplit(
        {"img": images, "label": np.array(labels)},
        {"img": Image(), "label": ClassLabel(num_classes=10)},
    )


def test_huggingface_images_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    module, calls = fake_datasets(
        {"train": image_split(3, [0, 1, 2]), "test": image_split(2, [3, 4], as_objects=True)}
    )
    monkeypatch.setitem(sys.modules, "datasets", module)
    (tmp_path / "cache").mkdir()
    data = load(
        "huggingface", {"hf_name": "someone/tiny", "hf_cache_dir": "cache"}, base_dir=tmp_path
    )
    assert calls == [("someone/tiny", None, str(tmp_path / "cache"), True, True)]
    assert module.config.HF_HUB_OFFLINE is False  # restored after loading
    assert data.x_train.shape == (3, 3, 5, 4) and data.x_test.shape == (2, 3, 5, 4)
    assert data.x_train[2].max() == pytest.approx(102 / 255)
    assert data.y_test.tolist() == [3, 4] and data.num_classes == 10


def test_huggingface_without_test_split_holds_out(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = FakeSplit({"x": np.arange(20.0).reshape(10, 2), "y": np.repeat([0, 1], 5)}, {})
    module, _ = fake_datasets({"train": vectors})
    monkeypatch.setitem(sys.modules, "datasets", module)
    data = load("huggingface", {"hf_name": "someone/tiny", "num_classes": 3}, test_fraction=0.2)
    assert data.x_train.shape == (8, 2) and np.bincount(data.y_test).tolist() == [1, 1]
    assert data.num_classes == 3


def test_huggingface_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    module, _ = fake_datasets({"train": FakeSplit({"a": np.zeros(2), "b": np.zeros(2)}, {})})
    monkeypatch.setitem(sys.modules, "datasets", module)
    assert error_of("huggingface", {"hf_name": "nobody/missing"}) == (
        "run.toml: data.hf_name: expected a data set in the local Hugging Face cache (fedsim "
        'loads offline; fetch it once with datasets.load_dataset), got "nobody/missing: '
        "Couldn't find 'nobody/missing' on the Hub or in the cache\""
    )
    assert error_of("huggingface", {"hf_name": "someone/tiny"}) == (
        "run.toml: data.feature_key: expected the name of the input column, one of: a, b"
    )
    assert error_of("huggingface", {"hf_name": "someone/tiny", "hf_split_test": "valid"}) == (
        "run.toml: data.hf_split_test: expected one of the splits (train), got 'valid'"
    )
    assert error_of(
        "huggingface", {"hf_name": "someone/tiny", "feature_key": "a", "label_key": "c"}
    ) == ("run.toml: data.label_key: expected a column of the data set (a, b), got 'c'")
    ragged = FakeSplit({"x": [np.zeros(2), np.zeros(3)], "label": np.array([0, 1])}, {})
    module, _ = fake_datasets({"train": ragged})
    monkeypatch.setitem(sys.modules, "datasets", module)
    assert error_of("huggingface", {"hf_name": "someone/tiny"}) == (
        "run.toml: data.feature_key: expected a column whose values all have the same shape, "
        "got 'x'"
    )
    assert error_of("huggingface") == (
        "run.toml: data.hf_name: expected a string (required for dataset 'huggingface')"
    )


def test_huggingface_needs_the_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    assert error_of("huggingface", {"hf_name": "someone/tiny"}) == (
        "run.toml: data.dataset: expected the optional `datasets` package for 'huggingface' "
        "(pip install datasets), got 'huggingface'"
    )
