"""Asynchronous aggregation driven by the virtual clock: the shared part of FedBuff
and FedAsync.

An asynchronous strategy is not a Flower ``Strategy``: there are no rounds in
which the server waits for a cohort. fedsim's asynchronous loop
(:mod:`fedsim.simulation.async_loop`) keeps up to ``concurrency`` clients training at
once; each trains on the model version it received, its reply arrives after its
simulated duration (:mod:`fedsim.system`), and arrivals are handed to
:meth:`AsyncStrategy.receive` in order of simulated arrival with their staleness
τ = (server version at arrival) − (version the client started from). A "round"
of an asynchronous run is one server model update.

Everything that changes between updates — the strategy's buffer, the model
versions still being trained on, the clients in flight with their replies, the
server version and the number of dispatches — is this object's state, so a
checkpoint taken between two updates resumes identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Model = dict[str, np.ndarray]
STALENESS = ("constant", "polynomial", "hinge")


def staleness_weight(tau: int, kind: str = "polynomial", a: float = 0.5, b: int = 4) -> float:
    """s(τ) of FedAsync (Xie et al. 2019, §5.2), which FedBuff's 1/√(1+τ) is a case of.

    constant: 1; polynomial: (1 + τ)^(−a); hinge: 1 if τ ≤ b else 1/(a(τ − b) + 1).

    >>> staleness_weight(3), staleness_weight(3, "constant"), staleness_weight(6, "hinge", 0.5, 4)
    (0.5, 1.0, 0.5)
    """
    if tau < 0:
        raise ValueError(f"staleness must be >= 0, got {tau}")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1.0 + tau) ** (-a))
    if kind == "hinge":
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    raise ValueError(f"staleness must be one of {', '.join(STALENESS)}, got {kind!r}")


@dataclass
class Flight:
    """A client whose reply is on its way: it arrives at ``arrival`` (simulated seconds)."""

    arrival: float
    client: int
    version: int  # the server version it trained on
    examples: int
    times: tuple[float, float, float, float]  # download, compute, upload, latency
    model: Model  # its reply


@dataclass
class AsyncState:
    """The asynchronous loop's state between two server updates."""

    version: int = 0
    dispatches: int = 0
    flights: list[Flight] = field(default_factory=list)
    versions: dict[int, Model] = field(default_factory=dict)  # models still trained on

    def prune(self) -> None:
        """Forget model versions no client in flight trained on."""
        wanted = {f.version for f in self.flights}
        self.versions = {v: m for v, m in self.versions.items() if v in wanted}


class AsyncStrategy:
    """Base of the asynchronous strategies: ``concurrency`` clients train at once;
    subclasses implement :meth:`receive` (and keep their own state in
    :meth:`own_state` / :meth:`load_own_state`)."""

    asynchronous = True

    def __init__(
        self,
        *,
        concurrency: int = 10,
        staleness: str = "polynomial",
        staleness_exponent: float = 0.5,
        staleness_cutoff: int = 4,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if staleness not in STALENESS:
            raise ValueError(f"staleness must be one of {', '.join(STALENESS)}, got {staleness!r}")
        if not staleness_exponent >= 0:
            raise ValueError(f"staleness_exponent must be >= 0, got {staleness_exponent!r}")
        self.concurrency = concurrency
        self.staleness = staleness
        self.staleness_exponent = float(staleness_exponent)
        self.staleness_cutoff = int(staleness_cutoff)
        self.state = AsyncState()

    def weight(self, tau: int) -> float:
        return staleness_weight(tau, self.staleness, self.staleness_exponent, self.staleness_cutoff)

    def receive(self, x: Model, reply: Model, base: Model, tau: int, examples: int) -> Model | None:
        """One arrival: the current model ``x``, the client's model ``reply`` trained from
        ``base`` (the version it received), its staleness. Returns the new server model
        when this arrival triggers an update, else None."""
        raise NotImplementedError

    # --- checkpoints --------------------------------------------------------

    def own_state(self) -> dict[str, Any]:
        return {}

    def load_own_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "version": s.version,
            "dispatches": s.dispatches,
            "flights": [
                {
                    "arrival": f.arrival,
                    "client": f.client,
                    "version": f.version,
                    "examples": f.examples,
                    "times": list(f.times),
                    "model": dict(f.model),
                }
                for f in s.flights
            ],
            "versions": [[v, dict(m)] for v, m in sorted(s.versions.items())],
            "own": self.own_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = AsyncState(
            version=int(state["version"]),
            dispatches=int(state["dispatches"]),
            flights=[
                Flight(
                    arrival=float(f["arrival"]),
                    client=int(f["client"]),
                    version=int(f["version"]),
                    examples=int(f["examples"]),
                    times=tuple(float(t) for t in f["times"]),  # type: ignore[arg-type]
                    model={k: np.asarray(v) for k, v in f["model"].items()},
                )
                for f in state["flights"]
            ],
            versions={
                int(v): {k: np.asarray(a) for k, a in m.items()} for v, m in state["versions"]
            },
        )
        self.load_own_state(state["own"])


def combine(parts: list[tuple[float, Model]], like: Model) -> Model:
    """Σ weight · model, computed in float64, cast to ``like``'s dtypes.

    >>> combine([(0.5, {"w": np.array([2.0])}), (2.0, {"w": np.array([1.0])})], {"w": np.zeros(1)})
    {'w': array([3.])}
    """
    out = {}
    for name, template in like.items():
        total = np.zeros(template.shape, dtype=np.float64)
        for w, model in parts:
            total += w * model[name].astype(np.float64)
        out[name] = total.astype(template.dtype)
    return out
