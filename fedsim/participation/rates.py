"""Each client's long-run participation rate p_n, shared by every rate-based pattern.

The FedAU paper (Wang & Ji, "A Lightweight Method for Tackling Unknown
Participation Statistics in Federated Averaging", https://arxiv.org/abs/2306.03401;
reference code github.com/IBM/fedau, ``util/util.py``) ties participation to
the label mix, which is the hard case for aggregation: one m ~ Dirichlet(α·1_C)
is drawn, and ``p_n = max(p_min, (d_n · m) · p_mean · C)`` where d_n is client
n's label distribution. The reference never clips p_n at 1 (with C = 10 and
p_mean = 0.1 it cannot exceed 1; with more classes it can, and its Bernoulli
sampler would then fail), so here p_n is additionally capped at 1.

Rates may also be given explicitly (a list, a file) or drawn from a
distribution: uniform in [low, high], a constant, or FLGo's lognormal rates
(``LN``/``SLN`` availability modes in github.com/WwZzz/easyFL,
``flgo/simulator/default_simulator.py``, after Ribero et al.,
https://arxiv.org/abs/2205.06730): c_n ~ LogNormal(0, −ln(1 − β)), p_n = c_n / max c.
Rates are drawn once, from the stream ``(seed, "participation.rates")``, so
every pattern of one scenario sees the same p_n.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.errors import ScenarioError
from fedsim.participation.options import Options, resolve_path
from fedsim.seeding import rng

RATES_PURPOSE = "participation.rates"
RATE_DISTRIBUTIONS = ("uniform", "constant", "lognormal")
RATE_FILE_SUFFIXES = (".csv", ".npy", ".txt")
LABEL_RATE_KEYS = ("p_mean", "p_min", "p_alpha")
# FLGo adds this to β so that β = 0 still gives a (tiny) positive log-scale.
LOGNORMAL_EPSILON = 1e-6


def label_rates(
    label_distribution: np.ndarray,
    *,
    seed: int,
    p_mean: float = 0.1,
    p_min: float = 0.02,
    alpha: float = 0.1,
) -> np.ndarray:
    """FedAU's p_n from each client's label mix (rows of ``label_distribution``, N × C).

    Rows are normalised (counts work too); a client with no examples gets ``p_min``.

    >>> d = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    >>> p = label_rates(d, seed=0, p_mean=0.5, p_min=0.0)
    >>> bool(np.isclose(p[2], 0.5)), bool(np.isclose(p[0] + p[1], 1.0))
    (True, True)
    """
    d = np.asarray(label_distribution, dtype=np.float64)
    totals = d.sum(axis=1, keepdims=True)
    d = np.divide(d, totals, out=np.zeros_like(d), where=totals > 0)
    num_classes = d.shape[1]
    m = rng(seed, RATES_PURPOSE).dirichlet(np.full(num_classes, alpha))
    raw = (d @ m) * p_mean * num_classes
    return np.minimum(1.0, np.maximum(p_min, raw))


def lognormal_rates(num_clients: int, *, seed: int, beta: float, scale: float = 1.0) -> np.ndarray:
    """FLGo's ``LN`` rates: c_n ~ LogNormal(0, −ln(1 − β − 1e-6)), p_n = scale · c_n / max c.

    >>> p = lognormal_rates(50, seed=0, beta=0.1)
    >>> float(p.max()), bool((p > 0).all())
    (1.0, True)
    """
    sigma = -np.log(1.0 - beta - LOGNORMAL_EPSILON)
    c = rng(seed, RATES_PURPOSE).lognormal(0.0, sigma, size=num_clients)
    return scale * c / c.max()


def uniform_rates(num_clients: int, *, seed: int, low: float, high: float) -> np.ndarray:
    """p_n uniform in [low, high], one draw per client.

    >>> p = uniform_rates(1000, seed=0, low=0.2, high=0.4)
    >>> bool((p >= 0.2).all() and (p <= 0.4).all())
    True
    """
    return low + (high - low) * rng(seed, RATES_PURPOSE).random(num_clients)


def build_rates(
    options: Options,
    *,
    num_clients: int,
    seed: int,
    label_distribution: np.ndarray | None,
    base_dir: str | Path,
) -> np.ndarray:
    """p_n as the ``rates`` key (with ``p_mean``, ``p_min``, ``p_alpha``) says, as (N,) floats."""
    spec = options.table.get("rates", "labels")
    if spec != "labels":
        for name in LABEL_RATE_KEYS:
            if options.has(name):
                raise options.fail(name, 'no value unless rates = "labels"', options.table[name])
    if spec == "labels":
        return _label_rates(options, num_clients, seed, label_distribution)
    if isinstance(spec, list | int | float) and not isinstance(spec, bool):
        return options.per_client("rates", None, num_clients=num_clients, minimum=0, maximum=1)
    if isinstance(spec, str):
        return load_rates(resolve_path(spec, base_dir), options, num_clients=num_clients)
    if isinstance(spec, dict):
        return _distribution(options.child("rates"), num_clients, seed)
    raise options.fail(
        "rates",
        '"labels", a rate, a list of one rate per client, a file path (.csv, .npy, .txt) '
        "or a table {distribution = ...}",
        spec,
    )


def _label_rates(
    options: Options, num_clients: int, seed: int, label_distribution: np.ndarray | None
) -> np.ndarray:
    p_mean = options.number("p_mean", 0.1, minimum=0, open_minimum=True)
    p_min = options.probability("p_min", 0.02)
    alpha = options.number("p_alpha", 0.1, minimum=0, open_minimum=True)
    if label_distribution is None:
        raise options.fail(
            "rates",
            "explicit rates (the clients' label mix is unknown here, e.g. with a user client.app)",
            "labels",
        )
    d = np.asarray(label_distribution, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != num_clients or (d < 0).any():
        raise options.fail(
            "rates",
            f"a label distribution of {num_clients} clients × classes",
            f"array of shape {d.shape}",
        )
    return label_rates(d, seed=seed, p_mean=p_mean, p_min=p_min, alpha=alpha)


def _distribution(table: Options, num_clients: int, seed: int) -> np.ndarray:
    name = table.text("distribution", None, choices=RATE_DISTRIBUTIONS)
    if name == "uniform":
        table.only_keys_of({"distribution", "low", "high"}, "rates distribution uniform")
        low = table.probability("low", 0.0)
        high = table.probability("high", 1.0)
        if high < low:
            raise table.fail("high", f"a number in [{low:g}, 1] (>= low)", high)
        return uniform_rates(num_clients, seed=seed, low=low, high=high)
    if name == "constant":
        table.only_keys_of({"distribution", "value"}, "rates distribution constant")
        return np.full(num_clients, table.probability("value", None))
    table.only_keys_of({"distribution", "beta", "scale"}, "rates distribution lognormal")
    beta = table.number("beta", 0.1, minimum=0, maximum=1, open_maximum=True)
    scale = table.number("scale", 1.0, minimum=0, maximum=1, open_minimum=True)
    return lognormal_rates(num_clients, seed=seed, beta=beta, scale=scale)


def load_rates(path: Path, options: Options, *, num_clients: int) -> np.ndarray:
    """Rates from a file: ``.npy`` or ``.txt`` (one rate per client, in client order) or
    ``.csv`` with columns ``client`` and ``rate`` (each client exactly once)."""
    key = options.key("rates")
    spec = options.table.get("rates")
    if path.suffix not in RATE_FILE_SUFFIXES:
        raise ScenarioError(options.source, key, "a .csv, .npy or .txt file of rates", got=spec)
    if not path.is_file():
        raise ScenarioError(
            options.source, key, f"an existing file ({path} does not exist)", got=spec
        )
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        elif path.suffix == ".txt":
            values = np.loadtxt(path, dtype=np.float64, ndmin=1)
        else:
            values = _csv_rates(path, num_clients)
    except (ValueError, KeyError, OSError) as error:
        raise ScenarioError(
            options.source, key, f"a readable rates file ({path.name}: {error})", got=spec
        ) from error
    values = np.asarray(values)
    if values.shape != (num_clients,) or not np.issubdtype(values.dtype, np.number):
        raise ScenarioError(
            options.source,
            key,
            f"{num_clients} rates (one per client) in {path.name}",
            got=f"shape {values.shape}",
        )
    bad = ~((values >= 0) & (values <= 1))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ScenarioError(
            options.source,
            key,
            f"rates in [0, 1] in {path.name} (client {first} has {values[first]:g})",
            got=spec,
        )
    return values.astype(np.float64)


def _csv_rates(path: Path, num_clients: int) -> np.ndarray:
    frame = pd.read_csv(path)
    if not {"client", "rate"} <= set(frame.columns):
        raise ValueError(f"columns client and rate expected, found {', '.join(frame.columns)}")
    clients = frame["client"].to_numpy()
    if not np.issubdtype(clients.dtype, np.integer) or sorted(clients) != list(range(num_clients)):
        raise ValueError(f"every client 0..{num_clients - 1} exactly once in column client")
    rates = np.empty(num_clients, dtype=np.float64)
    rates[clients] = frame["rate"].to_numpy(dtype=np.float64)
    return rates
