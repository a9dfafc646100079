"""The privacy spent by a run, per round, with Google's ``dp-accounting``.

Each round is one Gaussian mechanism with noise multiplier σ (the noise std over
the sensitivity, :mod:`fedsim.privacy.mechanism`) on the clients that took part,
composed over the rounds. What the participation pattern does decides the
amplification by sampling, and fedsim knows the pattern:

- ``always`` and ``uniform`` (with the strategy's ``fraction_train``): every
  client takes part with the same rate q = clients per round / N each round.
  Sampling a fixed number without replacement is accounted as Poisson sampling
  with that rate (the usual approximation, McMahan et al. 2018);
- ``bernoulli`` (and ``diurnal``, at its peak rate): client n takes part
  independently each round with its own p_n, i.e. Poisson sampling with rate
  q_n = p_n · fraction_train; each client has its own ε, and the population's
  guarantee is the worst client's, max_n q_n;
- ``markov``, ``cyclic``, ``trace`` and ``script``: whether a client takes part
  depends on the rounds before (or on a file or a program), which is not
  sampling; there is no amplification, and ε is accounted with q = 1. The run
  says so in its events and summary (:data:`NO_AMPLIFICATION`);
- local DP (``mode = "local"``): see :mod:`fedsim.privacy.local`; q = 1 and noise
  multiplier σ/2, stated as :data:`LOCAL`.

Dropouts and deadlines only remove clients after the fact and are ignored,
which can only overstate ε. ``dp-accounting`` is imported when a run accounts,
so fedsim imports without it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

UNIFORM_PATTERNS = ("always", "uniform")
POISSON_PATTERNS = ("bernoulli", "diurnal")
NO_AMPLIFICATION = (
    "no amplification by sampling: the {pattern} pattern does not sample clients "
    "independently each round, so epsilon is accounted as if every client took part "
    "in every round (q = 1)"
)

LOCAL = (
    "local DP: each client's report is a Gaussian mechanism on its own clipped update "
    "(noise multiplier sigma/2 against any other update of norm <= clip_norm); the server "
    "sees who sends, so there is no amplification by sampling (q = 1)"
)


@dataclass(frozen=True)
class Sampling:
    """Each client's per-round sampling rate q_n as the accountant takes it, and the
    plain statement of what was assumed."""

    rates: np.ndarray
    amplified: bool
    statement: str

    @property
    def worst(self) -> float:
        """The largest rate: the population's guarantee is that client's ε."""
        return float(self.rates.max(initial=0.0))


def sampling_of(
    pattern: str,
    *,
    num_clients: int,
    probabilities: np.ndarray | None,
    fraction: float = 1.0,
    amplitude: float = 0.0,
    local: bool = False,
) -> Sampling:
    """The sampling a pattern gives (``pattern``: the ``[participation]`` name;
    ``probabilities``: its long-run p_n; ``fraction``: the strategy's fraction of the
    reachable clients sampled; ``amplitude``: a diurnal pattern's).

    >>> s = sampling_of("uniform", num_clients=10, probabilities=np.full(10, 0.3))
    >>> s.worst, s.amplified
    (0.3, True)
    >>> sampling_of("cyclic", num_clients=2, probabilities=np.full(2, 0.1)).rates.tolist()
    [1.0, 1.0]
    """
    fraction = min(max(fraction, 0.0), 1.0)
    if local:
        return Sampling(np.ones(num_clients), False, LOCAL)
    if pattern in UNIFORM_PATTERNS and probabilities is not None:
        rate = float(np.max(probabilities)) * fraction  # the same for every client
        return Sampling(
            np.full(num_clients, rate),
            True,
            f"uniform sampling: every client takes part with q = {rate:.6g} each round",
        )
    if pattern in POISSON_PATTERNS and probabilities is not None:
        peak = np.minimum(1.0, np.asarray(probabilities, dtype=np.float64) * (1 + amplitude))
        rates = peak * fraction
        return Sampling(
            rates,
            True,
            "Poisson sampling with each client's own rate q_n = p_n"
            + (" at its diurnal peak" if amplitude else "")
            + f" (worst client q = {float(rates.max(initial=0.0)):.6g})",
        )
    return Sampling(np.ones(num_clients), False, NO_AMPLIFICATION.format(pattern=pattern))


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting logs a warning per RDP order it drops; the answer is unaffected."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def epsilon(
    q: float, noise_multiplier: float, rounds: int, delta: float, accountant: str = "rdp"
) -> float:
    """ε after ``rounds`` Poisson-sampled (rate ``q``) Gaussian mechanisms with
    ``noise_multiplier``, at ``delta``; ``accountant``: ``rdp`` or ``pld``.
    ``inf`` without noise; 0 for no rounds or q = 0.
    """
    if rounds == 0 or q == 0.0:
        return 0.0
    if noise_multiplier == 0.0:
        return math.inf
    import dp_accounting
    from dp_accounting import pld, rdp

    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise_multiplier))
    engine = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    with _quiet_absl():
        engine.compose(event, rounds)
        return float(engine.get_epsilon(delta))


MAX_DISTINCT_RATES = 200  # more distinct per-client rates are rounded up (see per_client)


def rounded_up(rates: np.ndarray, digits: int = 2) -> np.ndarray:
    """``rates`` rounded up to ``digits`` significant digits (ε grows with q, so the
    rounded rates overstate ε, never understate it).

    >>> rounded_up(np.array([0.1234, 0.00561, 1.0])).tolist()
    [0.13, 0.0057, 1.0]
    """
    rates = np.asarray(rates, dtype=np.float64)
    scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.where(rates > 0, rates, 1.0))))
    return np.minimum(1.0, np.ceil(np.round(rates * scale, 9)) / scale)


class Accountant:
    """ε of a run so far: the worst client's each round, and every client's at the end.

    With the RDP accountant a rate's one-round RDP curve is computed once and scaled by
    the number of rounds (what ``RdpAccountant.compose(event, rounds)`` does), so ε
    every round costs no new RDP computation; the tests check it equals
    :func:`epsilon`. Clients with the same rate are accounted once; beyond
    :data:`MAX_DISTINCT_RATES` distinct rates they are rounded up first.
    """

    def __init__(
        self, sampling: Sampling, noise_multiplier: float, delta: float, accountant: str = "rdp"
    ) -> None:
        self.sampling = sampling
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.accountant = accountant
        self._curves: dict[float, tuple[Any, np.ndarray]] = {}

    def _epsilon(self, q: float, rounds: int) -> float:
        if self.accountant != "rdp" or rounds == 0 or q == 0.0 or self.noise_multiplier == 0.0:
            return epsilon(q, self.noise_multiplier, rounds, self.delta, self.accountant)
        import dp_accounting
        from dp_accounting import rdp

        if q not in self._curves:
            engine = rdp.RdpAccountant()
            event = dp_accounting.PoissonSampledDpEvent(
                q, dp_accounting.GaussianDpEvent(self.noise_multiplier)
            )
            with _quiet_absl():
                engine.compose(event, 1)
            # The one-round RDP curve; RdpAccountant keeps it in _orders and _rdp.
            self._curves[q] = (engine._orders, np.array(engine._rdp))
        orders, curve = self._curves[q]
        return float(rdp.compute_epsilon(orders, rounds * curve, self.delta)[0])

    def worst(self, rounds: int) -> float:
        """The population's ε after ``rounds`` rounds (the worst-off client's)."""
        return self._epsilon(self.sampling.worst, rounds)

    def per_client(self, rounds: int) -> np.ndarray:
        """Each client's ε after ``rounds`` rounds."""
        rates = self.sampling.rates
        if np.unique(rates).size > MAX_DISTINCT_RATES:
            rates = rounded_up(rates)
        distinct, inverse = np.unique(rates, return_inverse=True)
        values = [self._epsilon(float(q), rounds) for q in distinct]
        return np.asarray(values)[inverse]
