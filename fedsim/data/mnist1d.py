"""The MNIST-1D generator, reimplemented on an explicit random stream.

MNIST-1D (Greydanus, "Scaling down Deep Learning", 2020, https://arxiv.org/abs/2011.14439)
turns ten hand-made 12-point templates, one per digit, into 40-point sequences by padding,
stretching, scaling, translating, adding correlated and iid noise, and shearing. It is small
enough to train in seconds on a CPU yet separates models with and without spatial inductive
biases, which makes it a good default data set for a federated simulator.

The PyPI package ``mnist1d`` is not used: it seeds NumPy's global RNG (fedsim never touches a
global RNG), imports ``requests`` and ``matplotlib`` and caches a pickle in the working
directory. This module follows its ``make_dataset``/``transform`` step by step (same
templates, same defaults, same order of operations) but draws from a ``numpy.random.Generator``
and works on all samples at once; the samples therefore differ from the published pickle
while following the same distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

NUM_CLASSES = 10
TEMPLATE_LEN = 12
_EPS = 1e-8  # added before padding so that template points stay distinguishable from padding


@dataclass(frozen=True)
class MNIST1DArgs:
    """The generator's parameters; the defaults are those of ``get_dataset_args`` upstream."""

    num_samples: int = 5000
    padding: tuple[int, int] = (36, 60)
    scale_coeff: float = 0.4
    max_translation: int = 48
    corr_noise_scale: float = 0.25
    iid_noise_scale: float = 2e-2
    shear_scale: float = 0.75
    shuffle_seq: bool = False
    final_seq_length: int = 40


def templates() -> np.ndarray:
    """The ten digit templates, shape (10, 12), whitened and starting and ending at 0.

    >>> t = templates()
    >>> t.shape, bool(np.allclose(t[:, 0], 0.0)), bool(np.allclose(t[:, -1], 0.0))
    ((10, 12), True, True)
    """
    raw = np.asarray(
        [
            [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
            [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
            [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
            [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
            [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
            [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
            [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
            [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
            [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
            [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
        ]
    )
    x = raw - raw.mean(axis=1, keepdims=True)
    x /= x.std(axis=1, keepdims=True)
    x -= x[:, :1]
    return x / 6.0


def resample(rows: np.ndarray, lengths: np.ndarray, size: int) -> np.ndarray:
    """Linear interpolation of each row's first ``lengths[i]`` points onto ``size`` points.

    The same as ``scipy.interpolate.interp1d(linspace(0, 1, L), row[:L])(linspace(0, 1, size))``
    for every row, vectorised.

    >>> resample(np.array([[0.0, 2.0, 9.0]]), np.array([2]), 3).tolist()
    [[0.0, 1.0, 2.0]]
    """
    position = np.linspace(0.0, 1.0, size)[None, :] * (lengths[:, None] - 1)
    low = np.minimum(np.floor(position).astype(np.int64), lengths[:, None] - 2)
    frac = position - low
    take = np.arange(len(rows))[:, None]
    return rows[take, low] * (1.0 - frac) + rows[take, low + 1] * frac


def generate(
    rng: np.random.Generator, args: MNIST1DArgs = MNIST1DArgs()
) -> tuple[np.ndarray, np.ndarray]:
    """All samples, shuffled and standardised: x (n, final_seq_length) float32, y (n,) int64.

    ``n = num_samples // 10 * 10`` (equal counts per digit, as upstream). The caller takes
    the first part as the training split and the rest as the test split, as upstream does.

    >>> x, y = generate(np.random.default_rng(0), MNIST1DArgs(num_samples=50))
    >>> x.shape, y.shape, sorted(np.bincount(y).tolist()) == [5] * 10
    ((50, 40), (50,), True)
    """
    per_class = args.num_samples // NUM_CLASSES
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class)
    n = len(labels)
    low, high = args.padding
    width = TEMPLATE_LEN + high  # the upstream "template_len + padding[-1]"

    # pad: a random number of zeros after the template, then stretch to `width` points.
    padded = np.zeros((n, TEMPLATE_LEN + high))
    padded[:, :TEMPLATE_LEN] = templates()[labels] + _EPS
    pad = rng.integers(low, high + 1, size=n)
    x = resample(padded, TEMPLATE_LEN + pad, width)
    # scale
    x *= 1.0 + args.scale_coeff * (rng.random(n) - 0.5)[:, None]
    # translate: a circular shift by k in [0, max_translation)
    shift = rng.integers(0, args.max_translation, size=n)
    columns = (np.arange(width)[None, :] - shift[:, None]) % width
    x = x[np.arange(n)[:, None], columns]
    # correlated noise where the signal is exactly zero (the padding), then iid noise
    corr = gaussian_filter1d(args.corr_noise_scale * rng.standard_normal((n, width)), 2, axis=1)
    x = np.where(x != 0, x, corr)
    x = x + args.iid_noise_scale * rng.standard_normal((n, width))
    # shear, then subsample to the final length
    coeff = args.shear_scale * (rng.random(n) - 0.5)
    x = x - coeff[:, None] * np.linspace(-0.5, 0.5, width)[None, :]
    x = resample(x, np.full(n, width), args.final_seq_length)

    order = rng.permutation(n)
    x, labels = x[order], labels[order]
    if args.shuffle_seq:
        x = x[:, rng.permutation(args.final_seq_length)]
    x = (x - x.mean()) / x.std()
    return x.astype(np.float32), labels
