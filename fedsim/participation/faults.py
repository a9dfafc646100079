"""In-round faults: a selected client's reply may never arrive, or arrive too late.

Availability decides who can be asked; faults decide what happens after a
client was asked. They layer on any pattern:

- ``dropout``: client n, once selected, drops out with probability d_n (its
  reply never arrives) — FLGo's "connectivity" modes, github.com/WwZzz/easyFL.
- ``latency`` and ``deadline``: client n's reply takes a time drawn from its
  own latency distribution (parameters may differ per client: a straggler is a
  client with a slower distribution); a reply later than the deadline is
  discarded and recorded as late (as FLGo's "responsiveness" modes with a
  latency tolerance, and the straggler set-ups of FedProx,
  https://arxiv.org/abs/1812.06127).

Each round draws one value per client from the streams
``(seed, "participation.dropout", round)`` and ``(seed, "participation.latency",
round)``, indexed by client id, so a client's fate in a round depends only on
(seed, client, round): not on who else was selected, nor on the order asked.
Latency is in abstract time units, the deadline's units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.participation.options import Options
from fedsim.participation.patterns import check_round
from fedsim.seeding import rng

DROPOUT_PURPOSE = "participation.dropout"
LATENCY_PURPOSE = "participation.latency"
FAULT_KEYS = ("dropout", "latency", "deadline")
LATENCY_PARAMETERS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "uniform": ("low", "high"),
    "exponential": ("mean",),
    "lognormal": ("median", "sigma"),
}


@dataclass(frozen=True)
class LatencyModel:
    """One latency distribution per client: ``params`` maps each parameter to (N,) floats.

    >>> model = LatencyModel("uniform", {"low": np.array([1.0, 5.0]), "high": np.array([2.0, 5.0])})
    >>> model.sample(np.random.default_rng(0)).round(2).tolist()
    [1.64, 5.0]
    """

    distribution: str
    params: dict[str, np.ndarray]

    def sample(self, generator: np.random.Generator) -> np.ndarray:
        """One latency per client."""
        p = self.params
        if self.distribution == "constant":
            return p["value"].copy()
        num_clients = len(next(iter(p.values())))
        if self.distribution == "uniform":
            return p["low"] + (p["high"] - p["low"]) * generator.random(num_clients)
        if self.distribution == "exponential":
            return p["mean"] * generator.standard_exponential(num_clients)
        return p["median"] * np.exp(p["sigma"] * generator.standard_normal(num_clients))


@dataclass(frozen=True)
class FaultOutcome:
    """The fate of each selected client in one round, aligned with ``selected``.

    ``latency`` is NaN for a client that dropped out, or when no latency model
    is set; ``replied = ~dropped & ~late``.
    """

    selected: np.ndarray
    replied: np.ndarray
    dropped: np.ndarray
    late: np.ndarray
    latency: np.ndarray


class Faults:
    """Dropout and deadline faults for the selected clients of a round.

    >>> faults = Faults(3, seed=0, dropout=np.array([0.0, 1.0, 0.0]),
    ...                 latency=LatencyModel("constant", {"value": np.array([1.0, 1.0, 9.0])}),
    ...                 deadline=5.0)
    >>> out = faults.outcome(1, np.array([2, 0, 1]))
    >>> out.replied.tolist(), out.dropped.tolist(), out.late.tolist()
    ([False, True, False], [False, False, True], [True, False, False])
    """

    def __init__(
        self,
        num_clients: int,
        *,
        seed: int,
        dropout: np.ndarray,
        latency: LatencyModel | None = None,
        deadline: float | None = None,
    ) -> None:
        self.num_clients = num_clients
        self.seed = seed
        self.dropout = np.asarray(dropout, dtype=np.float64)
        self.latency = latency
        self.deadline = np.inf if deadline is None else float(deadline)

    def outcome(self, round: int, selected: np.ndarray) -> FaultOutcome:
        """What happens to each client of ``selected`` (any order) after it is asked."""
        rnd = check_round(round)
        selected = np.asarray(selected, dtype=np.int64)
        if selected.ndim != 1 or ((selected < 0) | (selected >= self.num_clients)).any():
            raise ValueError(f"selected must be client ids in [0, {self.num_clients})")
        dropped = np.zeros(len(selected), dtype=bool)
        if (self.dropout > 0).any():
            u = rng(self.seed, DROPOUT_PURPOSE, rnd).random(self.num_clients)
            dropped = u[selected] < self.dropout[selected]
        latency = np.full(len(selected), np.nan)
        if self.latency is not None:
            latency = self.latency.sample(rng(self.seed, LATENCY_PURPOSE, rnd))[selected]
            latency[dropped] = np.nan
        late = ~dropped & (latency > self.deadline)
        return FaultOutcome(
            selected=selected, replied=~dropped & ~late, dropped=dropped, late=late, latency=latency
        )


def faults_from_options(options: Options, *, num_clients: int, seed: int) -> Faults | None:
    """Faults from the ``dropout``, ``latency`` and ``deadline`` keys; None when there are none."""
    dropout = options.per_client("dropout", 0.0, num_clients=num_clients, minimum=0, maximum=1)
    latency = _latency(options, num_clients) if options.has("latency") else None
    deadline = None
    if options.has("deadline"):
        deadline = options.number("deadline", None, minimum=0, open_minimum=True)
        if latency is None:
            raise options.fail(
                "deadline", "a latency table too (late means latency > deadline)", deadline
            )
    if latency is None and not (dropout > 0).any():
        return None
    return Faults(num_clients, seed=seed, dropout=dropout, latency=latency, deadline=deadline)


def _latency(options: Options, num_clients: int) -> LatencyModel:
    table = options.child("latency")
    table.only_keys_of({"distribution", "params"}, "latency")
    distribution = table.text("distribution", None, choices=tuple(LATENCY_PARAMETERS))
    params = table.child("params")
    names = LATENCY_PARAMETERS[distribution]
    params.only_keys_of(set(names), f"latency distribution {distribution}")

    def read(name: str, minimum: float, strict: bool = False) -> np.ndarray:
        return params.per_client(
            name, None, num_clients=num_clients, minimum=minimum, open_minimum=strict
        )

    values: dict[str, np.ndarray]
    if distribution == "constant":
        values = {"value": read("value", 0)}
    elif distribution == "uniform":
        values = {"low": read("low", 0), "high": read("high", 0)}
        if (values["high"] < values["low"]).any():
            raise params.fail("high", "numbers >= low", params.table["high"])
    elif distribution == "exponential":
        values = {"mean": read("mean", 0, strict=True)}
    else:
        values = {"median": read("median", 0, strict=True), "sigma": read("sigma", 0)}
    return LatencyModel(distribution, values)
