"""Data sets as plain NumPy arrays, loaded from local files or generated, never downloaded.

A run loads its data set once, in the driver, as a :class:`Dataset` (float32 inputs in
channels-first layout, int64 labels, an official or held-out test split); the partitioner
then splits the training part across clients and :mod:`fedsim.data.store` stores it
memory-mapped for the actors. Keeping the loaders free of torchvision and of any network
access makes runs reproducible on air-gapped clusters: a scenario names a local folder or a
generator, and the same seed gives the same arrays.

Built in:

- ``digits`` (scikit-learn's bundled 8x8 digits), ``mnist1d`` (Greydanus 2020,
  https://arxiv.org/abs/2011.14439, see :mod:`fedsim.data.mnist1d`) and ``synthetic`` (FedProx's
  Synthetic(alpha, beta), Li et al. 2020, https://arxiv.org/abs/1812.06127) need no files;
- ``mnist``/``fashion-mnist`` (IDX files), ``cifar10``/``cifar100`` (the python pickle
  batches) and ``npz`` read a local path;
- ``huggingface`` reads a data set from the local Hugging Face cache through the optional
  ``datasets`` package, in offline mode.

Each data set's extra ``[data]`` keys are listed in :data:`DATASET_OPTIONS` and documented in
docs/scenario.md; a wrong key, type or path raises :class:`~fedsim.errors.ScenarioError`.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import math
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data import mnist1d
from fedsim.data.partition import holdout_size, holdout_sizes, parts_from_owner
from fedsim.errors import ScenarioError
from fedsim.options import Options, number_text
from fedsim.seeding import rng


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled data set: train and test arrays, plus its own clients when it has them."""

    name: str
    x_train: np.ndarray  # float32, shape (n, *input_shape)
    y_train: np.ndarray  # int64, shape (n,)
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    # Train indices per client when the data set defines its own clients (synthetic).
    natural_partition: tuple[np.ndarray, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example, e.g. ``(1, 28, 28)``."""
        return tuple(int(d) for d in self.x_train.shape[1:])


DATASET_NAMES: tuple[str, ...] = (
    "digits",
    "mnist1d",
    "synthetic",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "cifar100",
    "npz",
    "huggingface",
)
MNIST1D_KEYS = frozenset(
    {
        "num_samples",
        "padding",
        "scale_coeff",
        "max_translation",
        "corr_noise_scale",
        "iid_noise_scale",
        "shear_scale",
        "shuffle_seq",
        "final_seq_length",
        "data_seed",
    }
)
SYNTHETIC_KEYS = frozenset(
    {
        "alpha",
        "beta",
        "iid",
        "dimension",
        "num_classes",
        "samples_per_client",
        "samples_sigma",
        "min_samples",
        "data_seed",
    }
)
HUGGINGFACE_KEYS = frozenset(
    {
        "hf_name",
        "hf_config",
        "hf_split_train",
        "hf_split_test",
        "feature_key",
        "label_key",
        "hf_cache_dir",
        "num_classes",
    }
)
DATASET_OPTIONS: dict[str, frozenset[str]] = {
    "digits": frozenset(),
    "mnist1d": MNIST1D_KEYS,
    "synthetic": SYNTHETIC_KEYS,
    "mnist": frozenset({"path"}),
    "fashion-mnist": frozenset({"path"}),
    "cifar10": frozenset({"path"}),
    "cifar100": frozenset({"path", "label_mode"}),
    "npz": frozenset({"path", "num_classes"}),
    "huggingface": HUGGINGFACE_KEYS,
}


def load_dataset(
    name: str,
    options: Mapping[str, Any],
    *,
    seed: int,
    num_clients: int,
    test_fraction: float,
    source: str | Path,
    base_dir: Path,
) -> Dataset:
    """Load or generate the data set ``name`` with its extra ``[data]`` keys ``options``.

    ``test_fraction`` is held out (stratified) as the test split by data sets without one;
    ``num_clients`` is used by data sets with their own clients (``synthetic``); relative
    paths are resolved against ``base_dir``, the scenario file's folder.

    >>> data = load_dataset("digits", {}, seed=0, num_clients=1, test_fraction=0.2,
    ...                     source="run.toml", base_dir=Path("."))
    >>> data.input_shape, len(data.y_train) + len(data.y_test), data.num_classes
    ((1, 8, 8), 1797, 10)
    """
    if name not in DATASET_OPTIONS:
        raise ScenarioError(source, "data.dataset", f"one of {', '.join(DATASET_NAMES)}", got=name)
    opts = _Options(source, name, options, base_dir)
    return _LOADERS[name](opts, seed, num_clients, test_fraction)


class _Options(Options):
    """A data set's extra ``[data]`` keys: the scenario's table reader, with the wording
    of the data set messages (one text for every failure of a number or an integer, the
    data set named in a missing key's note) and a data set's own seed."""

    def __init__(
        self, source: str | Path, dataset: str, table: Mapping[str, Any], base_dir: Path
    ) -> None:
        super().__init__(
            table,
            source=source,
            prefix="data",
            base_dir=base_dir,
            required=f"required for dataset '{dataset}'",
        )
        self.dataset = dataset
        self.only(
            DATASET_OPTIONS[dataset],
            f"a key that dataset '{dataset}' takes ({{known}})",
            none="none besides the common [data] keys",
        )

    def integer(
        self,
        name: str,
        default: int | None,
        *,
        minimum: int | None = None,
        expected: str | None = None,
    ) -> int:
        expected = expected or f"an integer >= {minimum}"
        return super().integer(name, default, minimum=minimum, expected=expected)

    def number(
        self,
        name: str,
        default: float | None,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        open_minimum: bool = False,
        open_maximum: bool = False,
        finite: bool = True,
        expected: str | None = None,
    ) -> float:
        bounds = (minimum, maximum, open_minimum, open_maximum)
        return super().number(
            name,
            default,
            minimum=minimum,
            maximum=maximum,
            open_minimum=open_minimum,
            open_maximum=open_maximum,
            finite=finite,
            expected=expected or number_text(*bounds),
        )

    def text(
        self,
        name: str,
        default: str | None,
        *,
        choices: Sequence[str] = (),
        nonempty: bool = True,
        expected: str | None = None,
    ) -> str:
        if expected is None and choices:
            expected = f"one of {', '.join(choices)}"
        return super().text(name, default, choices=choices, nonempty=nonempty, expected=expected)

    def seed(self, run_seed: int) -> int:
        return self.integer("data_seed", run_seed, minimum=0)


def _dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    natural: tuple[np.ndarray, ...] | None = None,
) -> Dataset:
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        num_classes=num_classes,
        natural_partition=natural,
    )


def stratified_holdout(
    labels: np.ndarray, fraction: float, generator: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices: ``holdout_size(n_c, fraction)`` random ones of each class
    go to test.

    >>> train, test = stratified_holdout(np.array([0] * 5 + [1] * 5), 0.4, np.random.default_rng(0))
    >>> len(train), len(test), np.bincount(np.asarray([0] * 5 + [1] * 5)[test]).tolist()
    (6, 4, [2, 2])
    """
    labels = np.asarray(labels, dtype=np.int64)
    by_class = parts_from_owner(labels, int(labels.max()) + 1 if len(labels) else 0)
    test = [
        generator.choice(members, size=holdout_size(len(members), fraction), replace=False)
        for members in by_class
        if len(members)
    ]
    test_idx = np.sort(np.concatenate(test)).astype(np.int64) if test else np.empty(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), test_idx), test_idx


def _held_out(
    name: str, x: np.ndarray, y: np.ndarray, num_classes: int, fraction: float, seed: int
) -> Dataset:
    train, test = stratified_holdout(y, fraction, rng(seed, "test-split"))
    return _dataset(name, x[train], y[train], x[test], y[test], num_classes)


# --- generated data sets -------------------------------------------------------------------


def _digits(opts: _Options, seed: int, _num_clients: int, test_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    return _held_out("digits", x, y, 10, test_fraction, seed)


def _mnist1d(opts: _Options, seed: int, _num_clients: int, test_fraction: float) -> Dataset:
    defaults = mnist1d.MNIST1DArgs()
    padding = opts.table.get("padding", list(defaults.padding))
    if (
        not isinstance(padding, list | tuple)
        or len(padding) != 2
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in padding)
        or not 0 <= padding[0] <= padding[1]
    ):
        raise opts.fail("padding", "two integers [low, high] with 0 <= low <= high", padding)
    low, high = int(padding[0]), int(padding[1])
    width = mnist1d.TEMPLATE_LEN + high
    args = mnist1d.MNIST1DArgs(
        num_samples=opts.integer("num_samples", defaults.num_samples, minimum=10),
        padding=(low, high),
        scale_coeff=opts.number("scale_coeff", defaults.scale_coeff, minimum=0.0),
        max_translation=opts.integer(
            "max_translation", min(defaults.max_translation, width), minimum=1
        ),
        corr_noise_scale=opts.number("corr_noise_scale", defaults.corr_noise_scale, minimum=0.0),
        iid_noise_scale=opts.number("iid_noise_scale", defaults.iid_noise_scale, minimum=0.0),
        shear_scale=opts.number("shear_scale", defaults.shear_scale, minimum=0.0),
        shuffle_seq=opts.boolean("shuffle_seq", defaults.shuffle_seq),
        final_seq_length=opts.integer("final_seq_length", defaults.final_seq_length, minimum=2),
    )
    if args.max_translation > width:
        raise opts.fail(
            "max_translation", f"an integer <= {width} (12 + padding high)", args.max_translation
        )
    x, y = mnist1d.generate(rng(opts.seed(seed), "mnist1d"), args)
    num_train = len(y) - holdout_size(len(y), test_fraction)
    x = x[:, None, :]
    return _dataset("mnist1d", x[:num_train], y[:num_train], x[num_train:], y[num_train:], 10)


def _synthetic(opts: _Options, seed: int, num_clients: int, test_fraction: float) -> Dataset:
    min_samples = opts.integer("min_samples", 50, minimum=1)
    sigma = opts.number("samples_sigma", 2.0, minimum=0.0)
    mu = 4.0  # FedProx: floor(lognormal(4, 2)) + 50, a mean of about 453 examples
    if "samples_per_client" in opts.table:
        mean = opts.number("samples_per_client", 0.0, minimum=float(min_samples), open_minimum=True)
        mu = math.log(mean - min_samples) - sigma**2 / 2
    args = SyntheticArgs(
        alpha=opts.number("alpha", 1.0, minimum=0.0),
        beta=opts.number("beta", 1.0, minimum=0.0),
        iid=opts.boolean("iid", False),
        dimension=opts.integer("dimension", 60, minimum=1),
        num_classes=opts.integer("num_classes", 10, minimum=2),
        mu=mu,
        sigma=sigma,
        min_samples=min_samples,
    )
    x, y, counts = generate_synthetic(rng(opts.seed(seed), "synthetic"), num_clients, args)
    # Each client's last holdout_size(n_k) examples (its samples are iid) go to the test split.
    client = np.repeat(np.arange(num_clients), counts)
    position = np.arange(len(y)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[client]
    train_counts = counts - holdout_sizes(counts, test_fraction)
    is_train = position < train_counts[client]
    starts = np.concatenate([[0], np.cumsum(train_counts)]).tolist()
    natural = tuple(np.arange(starts[k], starts[k + 1]) for k in range(num_clients))
    return _dataset(
        "synthetic", x[is_train], y[is_train], x[~is_train], y[~is_train], args.num_classes, natural
    )


@dataclass(frozen=True)
class SyntheticArgs:
    """Parameters of Synthetic(alpha, beta); the defaults are FedProx's Synthetic(1, 1)."""

    alpha: float = 1.0
    beta: float = 1.0
    iid: bool = False
    dimension: int = 60
    num_classes: int = 10
    mu: float = 4.0  # client sizes: floor(LogNormal(mu, sigma)) + min_samples
    sigma: float = 2.0
    min_samples: int = 50


def generate_synthetic(
    gen: np.random.Generator, num_clients: int, args: SyntheticArgs = SyntheticArgs()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FedProx's Synthetic(alpha, beta): x float32 (n, d), y int64 (n,), client-sorted, and
    the number of examples of each client.

    Follows ``data/synthetic_*/generate_*.py`` of github.com/litian96/FedProx: client k draws
    u_k ~ N(0, alpha), B_k ~ N(0, beta), v_k ~ N(B_k, 1)^d, W_k ~ N(u_k, 1)^(d x C),
    b_k ~ N(u_k, 1)^C, then x ~ N(v_k, diag(j^-1.2)) and y = argmax(x W_k + b_k). As in that
    code, alpha and beta are standard deviations. ``iid``: one W, b ~ N(0, 1) and v_k = 0.

    >>> x, y, counts = generate_synthetic(np.random.default_rng(0), 3)
    >>> x.shape == (counts.sum(), 60), int(counts.min()) >= 50, int(y.max()) < 10
    (True, True, True)
    """
    dim, num_classes = args.dimension, args.num_classes
    counts = np.floor(gen.lognormal(args.mu, args.sigma, num_clients)).astype(np.int64)
    counts += args.min_samples
    std_x = np.power(np.arange(1, dim + 1, dtype=np.float64), -1.2) ** 0.5
    if args.iid:
        shared_w = gen.normal(0.0, 1.0, (dim, num_classes))
        shared_b = gen.normal(0.0, 1.0, num_classes)
        means_x = np.zeros((num_clients, dim))
    else:
        mean_w = gen.normal(0.0, args.alpha, num_clients)
        mean_x = gen.normal(0.0, args.beta, num_clients)
        means_x = gen.normal(mean_x[:, None], 1.0, (num_clients, dim))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    client = np.repeat(np.arange(num_clients), counts)
    x = np.empty((total, dim), dtype=np.float32)
    step = max(1, (16 << 20) // (8 * dim))  # draw the inputs about 16 MB at a time
    for start in range(0, total, step):
        rows = slice(start, start + step)
        noise = gen.standard_normal((len(client[rows]), dim))
        x[rows] = means_x[client[rows]] + std_x * noise
    y = np.empty(total, dtype=np.int64)
    if args.iid:
        for start in range(0, total, step):
            rows = slice(start, start + step)
            y[rows] = np.argmax(x[rows] @ shared_w + shared_b, axis=1)
        return x, y, counts
    bounds = offsets.tolist()
    block = 256  # clients whose models are drawn in one call
    for first in range(0, num_clients, block):
        ids = slice(first, first + block)
        w = gen.normal(mean_w[ids, None, None], 1.0, (len(mean_w[ids]), dim, num_classes))
        b = gen.normal(mean_w[ids, None], 1.0, (len(mean_w[ids]), num_classes))
        for j in range(len(w)):
            start, end = bounds[first + j], bounds[first + j + 1]
            y[start:end] = np.argmax(x[start:end] @ w[j] + b[j], axis=1)
    return x, y, counts


# --- file formats --------------------------------------------------------------------------

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format), plain or gzip-compressed, as an array.

    Raises ValueError when the file is not a well-formed IDX file.
    """
    opener: Callable[..., Any] = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path.name} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(shape) != ndim or len(data) != expected:
        raise ValueError(f"{path.name}: {len(data)} bytes, its header announces {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find_file(opts: _Options, folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise opts.fail("path", f"a folder holding {names[0]} (or {names[0]}.gz)", str(folder))


def _descend(folder: Path, *subfolders: str) -> Path:
    """Accept the parent folder of a torchvision-style layout too (e.g. root/MNIST/raw)."""
    for sub in subfolders:
        if (folder / sub).is_dir():
            return folder / sub
    return folder


def _mnist_like(name: str, torchvision_dir: str) -> Callable[..., Dataset]:
    def load(opts: _Options, _seed: int, _num_clients: int, _test_fraction: float) -> Dataset:
        what = "a folder with the four IDX files (train-images-idx3-ubyte, ...)"
        folder = _descend(opts.path("path", what, folder=True), f"{torchvision_dir}/raw")
        arrays = []
        for stem in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
            kind = "idx3" if stem.endswith("images") else "idx1"
            path = _find_file(opts, folder, (f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"))
            try:
                arrays.append(read_idx(path))
            except ValueError as error:
                raise opts.fail("path", f"valid IDX files ({error})", str(path)) from error
        x_train, y_train, x_test, y_test = arrays
        for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise opts.fail(
                    "path",
                    f"{split} images (n, rows, cols) and labels (n,) of equal n",
                    f"{x.shape} and {y.shape}",
                )
            if len(y) and not 0 <= int(y.min()) <= int(y.max()) < 10:
                raise opts.fail("path", f"{split} labels in 0..9", f"{y.min()}..{y.max()}")
        scale = 255.0 if x_train.dtype == np.uint8 else 1.0
        return _dataset(
            name,
            x_train[:, None].astype(np.float32) / scale,
            y_train,
            x_test[:, None].astype(np.float32) / scale,
            y_test,
            10,
        )

    return load


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays, nothing that names other code: the
    CIFAR "python version" batches are pickles, and a data folder is data."""

    ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not data")
        return super().find_class(module, name)


def _unpickle(opts: _Options, path: Path) -> dict[bytes, Any]:
    if not path.is_file():
        raise opts.fail("path", f"a folder holding the file {path.name}", str(path.parent))
    with path.open("rb") as handle:
        try:
            batch = _ArraysOnly(handle, encoding="bytes").load()
        except Exception as error:
            raise opts.fail("path", "CIFAR python pickle batches", str(path)) from error
    if not isinstance(batch, dict) or b"data" not in batch:
        raise opts.fail("path", "CIFAR python pickle batches (a dict with b'data')", str(path))
    return batch


def normalise_channels(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, C, H, W) images to float32, standardised per channel with the training split's
    mean and standard deviation (of the pixel values scaled to [0, 1]).

    >>> train = np.array([[[[0, 255]]], [[[255, 255]]]], dtype=np.uint8)  # 1 channel, 2 pixels
    >>> a, b = normalise_channels(train, train[:1])
    >>> a.ravel().astype(float).round(4).tolist(), b.ravel().astype(float).round(4).tolist()
    ([-1.7321, 0.5774, 0.5774, 0.5774], [-1.7321, 0.5774])
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    tables = []  # the standardised value of each of the 256 pixel values, per channel
    for c in range(train.shape[1]):
        hist = np.bincount(train[:, c].ravel(), minlength=256).astype(np.float64)
        mean = hist @ values / hist.sum()
        std = math.sqrt(hist @ (values - mean) ** 2 / hist.sum()) or 1.0
        tables.append(((values - mean) / std).astype(np.float32))
    out = []
    for images in (train, test):
        x = np.empty(images.shape, dtype=np.float32)
        for c, table in enumerate(tables):
            x[:, c] = table[images[:, c]]
        out.append(x)
    return out[0], out[1]


def _cifar(opts: _Options, fine_key: bytes | None) -> Dataset:
    if fine_key is None:
        folder = _descend(
            opts.path("path", "the cifar-10-batches-py folder", folder=True), "cifar-10-batches-py"
        )
        train_batches = [_unpickle(opts, folder / f"data_batch_{i}") for i in range(1, 6)]
        test_batches = [_unpickle(opts, folder / "test_batch")]
        label_key, num_classes, name = b"labels", 10, "cifar10"
    else:
        folder = _descend(
            opts.path("path", "the cifar-100-python folder", folder=True), "cifar-100-python"
        )
        train_batches = [_unpickle(opts, folder / "train")]
        test_batches = [_unpickle(opts, folder / "test")]
        label_key, name = fine_key, "cifar100"
        num_classes = 100 if fine_key == b"fine_labels" else 20

    def stack(batches: list[dict[bytes, Any]]) -> tuple[np.ndarray, np.ndarray]:
        try:
            x = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
            y = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
            return x.reshape(-1, 3, 32, 32), y
        except (KeyError, ValueError) as error:
            raise opts.fail(
                "path", f"CIFAR batches with b'data' (n, 3072) and {label_key!r}", str(folder)
            ) from error

    x_train, y_train = stack(train_batches)
    x_test, y_test = stack(test_batches)
    x_train_f, x_test_f = normalise_channels(x_train, x_test)
    return _dataset(name, x_train_f, y_train, x_test_f, y_test, num_classes)


def _cifar10(opts: _Options, _seed: int, _num_clients: int, _test_fraction: float) -> Dataset:
    return _cifar(opts, None)


def _cifar100(opts: _Options, _seed: int, _num_clients: int, _test_fraction: float) -> Dataset:
    mode = opts.text("label_mode", "fine", choices=("fine", "coarse"))
    return _cifar(opts, b"fine_labels" if mode == "fine" else b"coarse_labels")


def _labels(opts: _Options, key: str, values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values)
    integral = np.issubdtype(values.dtype, np.integer) or (
        np.issubdtype(values.dtype, np.floating)
        and bool(np.all(np.isfinite(values)))
        and bool(np.all(values == np.round(values)))
    )
    if values.ndim != 1 or not integral or (len(values) and values.min() < 0):
        raise opts.fail(key, f"{what}: non-negative integer labels of shape (n,)", values.dtype)
    return values.astype(np.int64)


def _num_classes(opts: _Options, *label_arrays: np.ndarray, declared: int | None = None) -> int:
    """The ``num_classes`` key, else the data set's declared count, else the largest label + 1."""
    present = max((int(y.max()) + 1 for y in label_arrays if len(y)), default=1)
    default = max(present, int(declared)) if declared is not None else present
    num_classes = opts.integer("num_classes", default, minimum=1)
    if num_classes < present:
        raise opts.fail(
            "num_classes", f"an integer >= {present} (the largest label + 1)", num_classes
        )
    return num_classes


def _npz(opts: _Options, seed: int, _num_clients: int, test_fraction: float) -> Dataset:
    path = opts.path("path", "an .npz file with x_train and y_train", folder=False)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise opts.fail(
            "path", "an .npz file (numpy.savez) without pickled objects", str(path)
        ) from error
    missing = {"x_train", "y_train"} - arrays.keys()
    if missing or (("x_test" in arrays) != ("y_test" in arrays)):
        raise opts.fail(
            "path",
            "an .npz with x_train, y_train and optionally both x_test and y_test",
            ", ".join(sorted(arrays)),
        )
    x_train = arrays["x_train"]
    y_train = _labels(opts, "path", arrays["y_train"], "y_train")
    if x_train.ndim < 2 or len(x_train) != len(y_train):
        raise opts.fail(
            "path", "x_train of shape (n, ...) with n = len(y_train)", f"{x_train.shape}"
        )
    if "x_test" not in arrays:
        return _held_out("npz", x_train, y_train, _num_classes(opts, y_train), test_fraction, seed)
    x_test = arrays["x_test"]
    y_test = _labels(opts, "path", arrays["y_test"], "y_test")
    if x_test.shape[1:] != x_train.shape[1:] or len(x_test) != len(y_test):
        raise opts.fail(
            "path",
            f"x_test of shape (len(y_test), {', '.join(map(str, x_train.shape[1:]))})",
            f"{x_test.shape}",
        )
    return _dataset("npz", x_train, y_train, x_test, y_test, _num_classes(opts, y_train, y_test))


# --- Hugging Face --------------------------------------------------------------------------

_FEATURE_KEYS = ("image", "img", "pixel_values", "x", "features")
_LABEL_KEYS = ("label", "labels", "fine_label", "y", "target")


@contextlib.contextmanager
def _hf_offline(module: Any) -> Iterator[None]:
    """Force the Hugging Face libraries into offline mode: fedsim never downloads."""
    targets = [getattr(module, "config", None)]
    hub = sys.modules.get("huggingface_hub.constants")
    targets.append(hub)
    saved = []
    for target in targets:
        for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if target is not None and hasattr(target, flag):
                saved.append((target, flag, getattr(target, flag)))
                setattr(target, flag, True)
    try:
        yield
    finally:
        for target, flag, value in saved:
            setattr(target, flag, value)


def _import_datasets(opts: _Options) -> Any:
    if "datasets" not in sys.modules:
        # Read by the Hugging Face libraries when they are first imported.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        return importlib.import_module("datasets")
    except ImportError as error:
        raise ScenarioError(
            opts.source,
            "data.dataset",
            "the optional `datasets` package for 'huggingface' (pip install datasets)",
            got="huggingface",
        ) from error


def _hf_key(
    opts: _Options, key: str, guesses: tuple[str, ...], columns: list[str], what: str
) -> str:
    guess = next((name for name in guesses if name in columns), None)
    if key not in opts.table and guess is None:
        raise opts.fail(key, f"the name of the {what} column, one of: {', '.join(columns)}")
    return opts.text(key, guess)


def _hf_column(opts: _Options, split: Any, key: str, option: str) -> np.ndarray:
    if key not in split.column_names:
        raise opts.fail(option, f"a column of the data set ({', '.join(split.column_names)})", key)
    column = split.with_format("numpy")[key]
    try:
        values = np.asarray(column) if not isinstance(column, list) else None
        if values is None or values.dtype == object:  # one array per row: stack them
            values = np.stack([np.asarray(v) for v in column])
        return values
    except ValueError as error:
        raise opts.fail(option, "a column whose values all have the same shape", key) from error


def hf_images_to_arrays(x: np.ndarray, is_image: bool) -> np.ndarray:
    """Images (n, H, W) or (n, H, W, C) to float32 (n, C, H, W), uint8 scaled to [0, 1];
    anything else only cast to float32.

    >>> hf_images_to_arrays(np.zeros((2, 5, 4, 3), np.uint8), True).shape
    (2, 3, 5, 4)
    >>> hf_images_to_arrays(np.full((2, 5, 4), 255, np.uint8), True).max()
    np.float32(1.0)
    """
    image_like = is_image or x.dtype == np.uint8
    if image_like and x.ndim == 3:
        x = x[:, None]
    elif image_like and x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] > 4:
        x = np.transpose(x, (0, 3, 1, 2))
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return np.ascontiguousarray(x, dtype=np.float32) / np.float32(scale)


def _huggingface(opts: _Options, seed: int, _num_clients: int, test_fraction: float) -> Dataset:
    hf_name = opts.text("hf_name", None)
    hf_config = opts.optional_text("hf_config")
    train_split = opts.text("hf_split_train", "train")
    test_split = opts.optional_text("hf_split_test")
    cache_dir = None
    if "hf_cache_dir" in opts.table:
        cache_dir = str(opts.path("hf_cache_dir", "a Hugging Face cache folder", folder=True))
    module = _import_datasets(opts)
    try:
        with _hf_offline(module):
            splits = module.load_dataset(hf_name, hf_config, cache_dir=cache_dir)
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise opts.fail(
            "hf_name",
            "a data set in the local Hugging Face cache (fedsim loads offline; fetch it once "
            "with datasets.load_dataset)",
            f"{hf_name}: {first_line}",
        ) from error
    available = list(splits.keys())
    if train_split not in available:
        raise opts.fail(
            "hf_split_train", f"one of the splits ({', '.join(available)})", train_split
        )
    if test_split is not None and test_split not in available:
        raise opts.fail("hf_split_test", f"one of the splits ({', '.join(available)})", test_split)
    if test_split is None and "test" in available and train_split != "test":
        test_split = "test"
    train = splits[train_split]
    columns = train.column_names
    feature_key = _hf_key(opts, "feature_key", _FEATURE_KEYS, columns, "input")
    label_key = _hf_key(opts, "label_key", _LABEL_KEYS, columns, "label")
    feature = train.features.get(feature_key) if hasattr(train.features, "get") else None
    is_image = type(feature).__name__ == "Image"

    def arrays(split: Any) -> tuple[np.ndarray, np.ndarray]:
        x = hf_images_to_arrays(_hf_column(opts, split, feature_key, "feature_key"), is_image)
        y = _labels(opts, "label_key", _hf_column(opts, split, label_key, "label_key"), label_key)
        return x, y

    x_train, y_train = arrays(train)
    label_feature = train.features.get(label_key) if hasattr(train.features, "get") else None
    declared = getattr(label_feature, "num_classes", None)
    if test_split is None:
        num_classes = _num_classes(opts, y_train, declared=declared)
        return _held_out("huggingface", x_train, y_train, num_classes, test_fraction, seed)
    x_test, y_test = arrays(splits[test_split])
    num_classes = _num_classes(opts, y_train, y_test, declared=declared)
    return _dataset("huggingface", x_train, y_train, x_test, y_test, num_classes)


_LOADERS: dict[str, Callable[[_Options, int, int, float], Dataset]] = {
    "digits": _digits,
    "mnist1d": _mnist1d,
    "synthetic": _synthetic,
    "mnist": _mnist_like("mnist", "MNIST"),
    "fashion-mnist": _mnist_like("fashion-mnist", "FashionMNIST"),
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "npz": _npz,
    "huggingface": _huggingface,
}
