"""Who is reachable in a round: the stochastic participation patterns.

The FedAU paper's three patterns (Wang & Ji, https://arxiv.org/abs/2306.03401;
reference code github.com/IBM/fedau, ``util/util.py``, class ``WorkerSampler``)
share each client's long-run rate p_n: ``bernoulli``, ``markov`` and
``cyclic``. Next to them: ``always`` (everyone), ``uniform`` (k of N without
replacement, fresh each round) and ``diurnal``, a sine-modulated Bernoulli rate
after FLGo's ``SLN`` availability mode (github.com/WwZzz/easyFL,
``flgo/simulator/default_simulator.py``).

Determinism is the design constraint. Every random pattern reads client n's
own stream ``(seed, "participation.<pattern>", n)`` (:mod:`fedsim.seeding`), and
round r always uses the same positions of it, so the answer for a round never
depends on what was asked before, on the number of actors, or on a resume.
Drawing a numpy generator per client per round would cost far too much at
100 000 clients, so each client's uniforms are drawn a block of
``block_rounds`` rounds at a time (PCG64 ``advance`` jumps straight to a
block, from the client's seeded state kept after its first block: 100 000
clients cost about 2.4 s for the first block and 0.5 s for each later one on
2 cores); the block size changes speed, never the result. Markov chains need
their past: blocks are computed in order and the chain state is carried from
one to the next, and a fresh object asked for a later round replays the chain
from its start (vectorised over clients).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.seeding import rng, seed_sequence

BLOCK_ROUNDS = 256
# float64 values drawn per chunk of clients (16 MiB), to bound memory at 100k clients.
CHUNK_VALUES = 1 << 21


def check_round(round: int) -> int:
    """``round`` as an int, refusing anything below 1 (rounds start at 1)."""
    if isinstance(round, bool) or not isinstance(round, int | np.integer) or round < 1:
        raise ValueError(f"rounds start at 1, got {round!r}")
    return int(round)


def client_uniforms(seed: int, purpose: str, clients: range, start: int, count: int) -> np.ndarray:
    """Uniforms ``start .. start+count-1`` of each client's stream, as (clients, count).

    Position k of client n's stream is the k-th ``random()`` of
    ``fedsim.seeding.rng(seed, purpose, n)``:

    >>> u = client_uniforms(3, "x", range(2), 5, 3)
    >>> bool((u[1] == rng(3, "x", 1).random(8)[5:]).all())
    True
    """
    return ClientStreams(seed, purpose).uniforms(clients, start, count)


class ClientStreams:
    """Every client's stream ``(seed, purpose, n)``, read a block at a time.

    Seeding a client's generator (hashing its seed sequence) costs three times
    as much as drawing a block of 256 values from it, so each client's seeded
    PCG64 state is kept after its first block and later blocks start from it
    (about 200 bytes per client).
    """

    def __init__(self, seed: int, purpose: str) -> None:
        self.seed, self.purpose = seed, purpose
        self._starts: dict[int, tuple[int, int]] = {}  # client -> PCG64 (state, inc)
        self._bits = np.random.PCG64(0)
        self._generator = np.random.Generator(self._bits)

    def _start(self, client: int) -> Any:  # a PCG64 state dict
        if client not in self._starts:
            seeded = np.random.PCG64(seed_sequence(self.seed, self.purpose, client)).state
            self._starts[client] = (seeded["state"]["state"], seeded["state"]["inc"])
        state, inc = self._starts[client]
        return {
            "bit_generator": "PCG64",
            "state": {"state": state, "inc": inc},
            "has_uint32": 0,
            "uinteger": 0,
        }

    def uniforms(self, clients: range, start: int, count: int) -> np.ndarray:
        """Uniforms ``start .. start+count-1`` of each of ``clients``, as (clients, count)."""
        out = np.empty((len(clients), count), dtype=np.float64)
        for i, client in enumerate(clients):
            self._bits.state = self._start(client)
            self._bits.advance(start)  # one 64-bit output per float64 uniform
            out[i] = self._generator.random(count)
        return out


def client_chunks(num_clients: int, values_per_client: int) -> list[range]:
    """Consecutive client ranges whose draws fit in ``CHUNK_VALUES`` values.

    >>> client_chunks(5, CHUNK_VALUES // 2)
    [range(0, 2), range(2, 4), range(4, 5)]
    """
    size = max(1, CHUNK_VALUES // max(1, values_per_client))
    return [range(lo, min(lo + size, num_clients)) for lo in range(0, num_clients, size)]


class AlwaysPattern:
    """Every client is reachable in every round.

    >>> AlwaysPattern(3).reachable(7)
    array([0, 1, 2])
    """

    def __init__(self, num_clients: int) -> None:
        self.num_clients = num_clients
        self.probabilities: np.ndarray | None = np.ones(num_clients)

    def reachable(self, round: int) -> np.ndarray:
        check_round(round)
        return np.arange(self.num_clients, dtype=np.int64)


class UniformPattern:
    """``k`` of the N clients, uniformly without replacement, from the round's own stream.

    >>> UniformPattern(10, 3, seed=0).reachable(1).size
    3
    """

    PURPOSE = "participation.uniform"

    def __init__(self, num_clients: int, clients_per_round: int, *, seed: int) -> None:
        if not 1 <= clients_per_round <= num_clients:
            raise ValueError(f"clients_per_round must be in [1, {num_clients}]")
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.probabilities: np.ndarray | None = np.full(
            num_clients, clients_per_round / num_clients
        )

    def reachable(self, round: int) -> np.ndarray:
        generator = rng(self.seed, self.PURPOSE, check_round(round))
        chosen = generator.choice(self.num_clients, self.clients_per_round, replace=False)
        return np.sort(chosen).astype(np.int64)


class _BlockPattern:
    """A pattern computed ``block_rounds`` rounds at a time, as a (rounds, clients) mask."""

    def __init__(self, num_clients: int, *, seed: int, block_rounds: int) -> None:
        if block_rounds < 1:
            raise ValueError("block_rounds must be >= 1")
        self.num_clients = num_clients
        self.seed = seed
        self.block_rounds = block_rounds
        self._block_index = -1
        self._block = np.zeros((0, num_clients), dtype=bool)

    def reachable(self, round: int) -> np.ndarray:
        index, row = divmod(check_round(round) - 1, self.block_rounds)
        if index != self._block_index:
            self._block = self._compute_block(index)
            self._block_index = index
        return np.flatnonzero(self._block[row]).astype(np.int64)

    def _compute_block(self, index: int) -> np.ndarray:
        raise NotImplementedError


class BernoulliPattern(_BlockPattern):
    """Client n is reachable in each round independently with probability p_n.

    Round r uses position r − 1 of client n's stream.

    >>> pattern = BernoulliPattern(np.array([0.0, 1.0, 0.5]), seed=0)
    >>> [int(c) for c in pattern.reachable(1) if c < 2]
    [1]
    """

    PURPOSE = "participation.bernoulli"

    def __init__(
        self, probabilities: np.ndarray, *, seed: int, block_rounds: int = BLOCK_ROUNDS
    ) -> None:
        super().__init__(len(probabilities), seed=seed, block_rounds=block_rounds)
        self.probabilities: np.ndarray | None = np.asarray(probabilities, dtype=np.float64)
        self._streams = ClientStreams(seed, self.PURPOSE)

    def thresholds(self, rounds: np.ndarray, clients: range) -> np.ndarray:
        """P(reachable) of ``clients`` (rows) in ``rounds`` (columns)."""
        assert self.probabilities is not None
        p = self.probabilities[clients.start : clients.stop, None]
        return np.broadcast_to(p, (len(clients), len(rounds)))

    def _compute_block(self, index: int) -> np.ndarray:
        count = self.block_rounds
        first = index * count
        rounds = np.arange(first + 1, first + count + 1)
        out = np.empty((count, self.num_clients), dtype=bool)
        for clients in client_chunks(self.num_clients, count):
            u = self._streams.uniforms(clients, first, count)
            out[:, clients.start : clients.stop] = (u < self.thresholds(rounds, clients)).T
        return out


class DiurnalPattern(BernoulliPattern):
    """Bernoulli with a daily cycle: P(n reachable in round t) =
    clip(p_n · (1 + A · sin(2π · ((t − 1)/P + φ_n))), 0, 1).

    The long-run rate is p_n as long as p_n · (1 + A) ≤ 1 (clipping lowers it
    otherwise). φ_n = ``phase_spread`` · u_n with u_n uniform from client n's
    stream ``(seed, "participation.diurnal.phase", n)``: 0 puts every client in
    the same time zone. FLGo's ``SLN`` mode is p(i, t) = q_i · (0.5 + 0.4 sin(·))
    with a period of 24 rounds, i.e. rates 0.5 · q_i with A = 0.8 here (FLGo
    samples its sine at ``linspace(0, 2π, 24)``, so its cycle repeats a zero
    every 24 rounds; here the sine is exact with period P).

    >>> DiurnalPattern(np.full(4, 0.5), period=4, amplitude=1.0, seed=0).thresholds(
    ...     np.arange(1, 5), range(1))
    array([[0.5, 1. , 0.5, 0. ]])
    """

    PURPOSE = "participation.diurnal"
    PHASE_PURPOSE = "participation.diurnal.phase"

    def __init__(
        self,
        probabilities: np.ndarray,
        *,
        period: float,
        amplitude: float,
        seed: int,
        phase_spread: float = 0.0,
        block_rounds: int = BLOCK_ROUNDS,
        time_period: float | None = None,
    ) -> None:
        super().__init__(probabilities, seed=seed, block_rounds=block_rounds)
        self.period = float(period)
        # Driven by simulated time: the period in simulated seconds (None: by rounds).
        self.time_period = time_period
        self.amplitude = float(amplitude)
        self.phases = np.zeros(self.num_clients)
        if phase_spread > 0:
            u = client_uniforms(seed, self.PHASE_PURPOSE, range(self.num_clients), 0, 1)
            self.phases = phase_spread * u[:, 0]

    def thresholds(self, rounds: np.ndarray, clients: range) -> np.ndarray:
        return self._rates((rounds[None, :] - 1) / self.period, clients)

    def _rates(self, cycles: np.ndarray, clients: range) -> np.ndarray:
        """P(reachable) of ``clients`` (rows) at ``cycles`` periods into the run (columns)."""
        assert self.probabilities is not None
        lo, hi = clients.start, clients.stop
        angle = 2 * np.pi * (cycles + self.phases[lo:hi, None])
        rate = self.probabilities[lo:hi, None] * (1 + self.amplitude * np.sin(angle))
        # Rounding drops sin()'s 1e-16 residues at its zeros (a rate of 1e-17 is a rate of 0).
        return np.clip(np.round(rate, 12), 0.0, 1.0)

    def reachable(self, round: int) -> np.ndarray:
        if self.time_period is not None:
            raise ValueError(
                "this diurnal pattern follows simulated time: ask reachable_at(round, seconds)"
            )
        return super().reachable(round)

    def reachable_at(self, round: int, seconds: float) -> np.ndarray:
        """Time-driven (``clock = "simulated"``): who is reachable in ``round`` when it
        starts ``seconds`` of simulated time into the run.

        Round r compares the same uniform of client n's stream as the round-driven
        pattern (position r − 1) with p_n(t) = clip(p_n · (1 + A · sin(2π(t/P + φ_n))), 0, 1),
        t the round's simulated start and P the period in simulated seconds: a long
        round moves the day forward.

        >>> day = DiurnalPattern(np.full(3, 0.5), period=1, amplitude=1.0, seed=0,
        ...                      time_period=4.0)
        >>> day.reachable_at(1, 1.0).tolist(), day.reachable_at(1, 3.0).tolist()
        ([0, 1, 2], [])
        """
        rnd = check_round(round)
        period = self.time_period if self.time_period is not None else self.period
        out = np.empty(self.num_clients, dtype=bool)
        cycles = np.array([float(seconds) / period])
        for clients in client_chunks(self.num_clients, 1):
            u = self._streams.uniforms(clients, rnd - 1, 1)
            out[clients.start : clients.stop] = (u < self._rates(cycles, clients))[:, 0]
        return np.flatnonzero(out).astype(np.int64)


def markov_transitions(p: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-client (P(off→on), P(on→off)) with stationary rate p, as the FedAU reference.

    b = a(1/p − 1); if b > 1 then a ← a/b and b ← 1.

    >>> a, b = markov_transitions(np.array([0.5, 0.02, 1.0, 0.0]), 0.05)
    >>> a.round(4).tolist(), b.round(4).tolist()
    ([0.05, 0.0204, 0.05, 0.0], [0.05, 1.0, 0.0, 1.0])
    """
    p = np.asarray(p, dtype=np.float64)
    safe = np.where(p > 0, p, 1.0)
    b = np.where(p > 0, a * (1.0 / safe - 1.0), np.inf if a > 0 else 0.0)
    over = b > 1
    to_on = np.where(over, a / np.where(over, b, 1.0), a)
    to_off = np.where(over, 1.0, b)
    return to_on, to_off


class MarkovPattern(_BlockPattern):
    """A two-state chain per client with stationary rate p_n (FedAU's ``markov-a``).

    Position 0 of client n's stream draws the start state (on with probability
    p_n); position r makes the step taken just before round r (the reference
    steps, then reports).

    >>> pattern = MarkovPattern(np.array([1.0, 0.0]), a=0.05, seed=0)
    >>> pattern.reachable(3).tolist()
    [0]
    """

    PURPOSE = "participation.markov"

    def __init__(
        self, probabilities: np.ndarray, *, a: float, seed: int, block_rounds: int = BLOCK_ROUNDS
    ) -> None:
        super().__init__(len(probabilities), seed=seed, block_rounds=block_rounds)
        self.probabilities: np.ndarray | None = np.asarray(probabilities, dtype=np.float64)
        self.a = float(a)
        self.to_on, self.to_off = markov_transitions(self.probabilities, self.a)
        self._streams = ClientStreams(seed, self.PURPOSE)
        self._state_round = -1
        self._state = np.zeros(self.num_clients, dtype=bool)

    def _compute_block(self, index: int) -> np.ndarray:
        first = index * self.block_rounds + 1
        last = first + self.block_rounds - 1
        carried = self._state_round == first - 1
        begin = first if carried else 0
        out = np.empty((self.block_rounds, self.num_clients), dtype=bool)
        for clients in client_chunks(self.num_clients, last + 1 - begin):
            state = self._state[clients.start : clients.stop] if carried else None
            out[:, clients.start : clients.stop] = self._chain(clients, state, first, last)
        self._state = out[-1].copy()
        self._state_round = last
        return out

    def _chain(self, clients: range, state: np.ndarray | None, first: int, last: int) -> np.ndarray:
        """States in rounds ``first..last`` given the state after round first − 1 (None:
        replay the chain from its start)."""
        assert self.probabilities is not None
        lo, hi = clients.start, clients.stop
        begin = 0 if state is None else first
        u = self._streams.uniforms(clients, begin, last + 1 - begin)
        if state is None:
            state = u[:, 0] < self.probabilities[lo:hi]
        to_on, to_off = self.to_on[lo:hi], self.to_off[lo:hi]
        out = np.empty((last + 1 - first, hi - lo), dtype=bool)
        for rnd in range(max(1, begin), last + 1):
            x = u[:, rnd - begin]
            state = np.where(state, x >= to_off, x < to_on)
            if rnd >= first:
                out[rnd - first] = state
        return out


def cycle_lengths(p: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
    """(on, off) run lengths of FedAU's ``cyclic-P``: on = max(1, round(P·p_n)),
    off = max(1, P − on), with numpy's round-half-to-even as the reference.

    >>> on, off = cycle_lengths(np.array([0.1, 0.025, 0.0, 1.0]), 100)
    >>> on.tolist(), off.tolist()
    ([10, 2, 1, 100], [90, 98, 99, 1])
    """
    on = np.maximum(1, np.round(period * np.asarray(p, dtype=np.float64))).astype(np.int64)
    off = np.maximum(1, period - on)
    return on, off


class CyclicPattern:
    """On for ``on_n`` rounds, off for ``off_n``, repeating; each client starts off.

    The reference (``WorkerSampler.cyclic_update``) starts every client off with
    a countdown c_n uniform in {0, …, off_n − 1}; each round, if the countdown
    is 0 the state toggles and the countdown resets to the new state's length,
    then it decreases by one. So client n is off in rounds 1..c_n, then on for
    on_n rounds, off for off_n, and so on; here that is evaluated in closed form
    for any round. c_n = ⌊off_n · u_n⌋, u_n from client n's stream.

    >>> pattern = CyclicPattern(np.array([0.5]), period=4, seed=0)
    >>> pattern.countdown[0] in (0, 1), [pattern.reachable(r).size for r in range(1, 9)]
    (True, [0, 1, 1, 0, 0, 1, 1, 0])
    """

    PURPOSE = "participation.cyclic"

    def __init__(self, probabilities: np.ndarray, *, period: int, seed: int) -> None:
        self.probabilities: np.ndarray | None = np.asarray(probabilities, dtype=np.float64)
        self.num_clients = len(self.probabilities)
        self.period = int(period)
        self.on, self.off = cycle_lengths(self.probabilities, self.period)
        u = client_uniforms(seed, self.PURPOSE, range(self.num_clients), 0, 1)[:, 0]
        self.countdown = np.minimum(np.floor(u * self.off), self.off - 1).astype(np.int64)

    def reachable(self, round: int) -> np.ndarray:
        since = check_round(round) - 1 - self.countdown
        on = (since >= 0) & (since % (self.on + self.off) < self.on)
        return np.flatnonzero(on).astype(np.int64)
