"""Participation: which clients are reachable in each round, and what happens once asked.

Participation is the simulated environment, not the strategy: the engine asks
a :class:`Pattern` for the reachable clients of a round and exposes only those;
no strategy is told a client's rate (an oracle baseline may read
``pattern.probabilities`` explicitly). :class:`~fedsim.participation.faults.Faults`
then decide which selected clients' replies arrive in time.

The ``[participation]`` table of a scenario is read here: ``pattern`` picks a
builder from the registry, each pattern accepts its own keys, and the fault
keys (``dropout``, ``latency``, ``deadline``) go with any pattern. The
reference for every key is docs/scenario.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedsim.options import read_duration
from fedsim.participation.faults import FAULT_KEYS, FaultOutcome, Faults, faults_from_options
from fedsim.participation.options import Options, resolve_path
from fedsim.participation.patterns import (
    AlwaysPattern,
    BernoulliPattern,
    CyclicPattern,
    DiurnalPattern,
    MarkovPattern,
    UniformPattern,
)
from fedsim.participation.rates import build_rates
from fedsim.participation.script import ScriptPattern, load_script
from fedsim.participation.trace import TRACE_ENDS, TracePattern, load_trace

__all__ = [
    "PATTERN_KEYS",
    "PATTERN_NAMES",
    "FaultOutcome",
    "Faults",
    "Pattern",
    "build_faults",
    "build_pattern",
]


class Pattern(Protocol):
    """Who is reachable in a round; the same answer for a round whatever was asked before."""

    num_clients: int
    # Long-run rate p_n per client where one is defined (for oracle baselines only), else None.
    probabilities: np.ndarray | None

    def reachable(self, round: int) -> np.ndarray:
        """Sorted int64 ids of the clients reachable in ``round`` (rounds start at 1)."""
        ...


RATE_KEYS = ("rates", "p_mean", "p_min", "p_alpha")
PATTERN_KEYS: dict[str, tuple[str, ...]] = {
    "always": (),
    "uniform": ("clients_per_round",),
    "bernoulli": RATE_KEYS,
    "markov": (*RATE_KEYS, "a"),
    "cyclic": (*RATE_KEYS, "period"),
    "diurnal": (*RATE_KEYS, "period", "amplitude", "phase_spread", "clock"),
    "trace": ("trace", "trace_end"),
    "script": ("script", "script_args"),
}
PATTERN_NAMES: tuple[str, ...] = tuple(PATTERN_KEYS)


class _Context:
    """What every builder may need besides the options."""

    def __init__(
        self,
        *,
        num_clients: int,
        seed: int,
        label_distribution: np.ndarray | None,
        base_dir: Path,
    ) -> None:
        self.num_clients = num_clients
        self.seed = seed
        self.label_distribution = label_distribution
        self.base_dir = base_dir

    def rates(self, options: Options) -> np.ndarray:
        return build_rates(
            options,
            num_clients=self.num_clients,
            seed=self.seed,
            label_distribution=self.label_distribution,
            base_dir=self.base_dir,
        )


def build_pattern(
    options: Mapping[str, Any],
    *,
    num_clients: int,
    seed: int,
    label_distribution: np.ndarray | None,
    source: str | Path,
    base_dir: Path,
) -> Pattern:
    """The pattern the ``[participation]`` table describes.

    >>> pattern = build_pattern({"pattern": "uniform", "clients_per_round": 2}, num_clients=5,
    ...     seed=0, label_distribution=None, source="s.toml", base_dir=Path("."))
    >>> pattern.reachable(1).size
    2
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    table = _checked(options, source)
    context = _Context(
        num_clients=num_clients,
        seed=seed,
        label_distribution=label_distribution,
        base_dir=Path(base_dir),
    )
    return _BUILDERS[table.table.get("pattern", "always")](table, context)


def build_faults(
    options: Mapping[str, Any],
    *,
    num_clients: int,
    seed: int,
    source: str | Path,
    base_dir: Path,
) -> Faults | None:
    """The in-round faults of the ``[participation]`` table; None when it sets none.

    >>> build_faults({"pattern": "always", "dropout": 0.1}, num_clients=3, seed=0,
    ...              source="s.toml", base_dir=Path(".")).dropout.tolist()
    [0.1, 0.1, 0.1]
    """
    return faults_from_options(_checked(options, source), num_clients=num_clients, seed=seed)


def _checked(options: Mapping[str, Any], source: str | Path) -> Options:
    """The table, with a known pattern and only that pattern's keys and the fault keys."""
    table = Options(options, source=source)
    name = table.text("pattern", "always", choices=PATTERN_NAMES)
    table.only_keys_of({"pattern", *FAULT_KEYS, *PATTERN_KEYS[name]}, f'pattern "{name}"')
    return table


def _always(options: Options, context: _Context) -> Pattern:
    return AlwaysPattern(context.num_clients)


def _uniform(options: Options, context: _Context) -> Pattern:
    n = context.num_clients
    k = options.integer("clients_per_round", None, minimum=1)
    if k > n:
        raise options.fail(
            "clients_per_round", f"an integer in [1, {n}] (the number of clients)", k
        )
    return UniformPattern(n, k, seed=context.seed)


def _bernoulli(options: Options, context: _Context) -> Pattern:
    return BernoulliPattern(context.rates(options), seed=context.seed)


def _markov(options: Options, context: _Context) -> Pattern:
    a = options.probability("a", 0.05)
    return MarkovPattern(context.rates(options), a=a, seed=context.seed)


def _cyclic(options: Options, context: _Context) -> Pattern:
    period = options.integer("period", 100, minimum=1)
    return CyclicPattern(context.rates(options), period=period, seed=context.seed)


def _diurnal(options: Options, context: _Context) -> Pattern:
    clock = options.text("clock", "rounds", choices=("rounds", "simulated"))
    time_period = None
    if clock == "simulated":  # the period is a duration of simulated time ([system])
        time_period = read_duration(options, "period") if options.has("period") else 86400.0
        period = 24.0
    else:
        period = options.number("period", 24, minimum=0, open_minimum=True)
    amplitude = options.probability("amplitude", 0.8)
    phase_spread = options.probability("phase_spread", 0.0)
    return DiurnalPattern(
        context.rates(options),
        period=period,
        amplitude=amplitude,
        phase_spread=phase_spread,
        seed=context.seed,
        time_period=time_period,
    )


def _trace(options: Options, context: _Context) -> Pattern:
    spec = options.text("trace", None)
    end = options.text("trace_end", "cycle", choices=TRACE_ENDS)
    path = resolve_path(spec, context.base_dir)
    rounds = load_trace(
        path,
        num_clients=context.num_clients,
        source=options.source,
        key=options.key("trace"),
        spec=spec,
    )
    return TracePattern(rounds, num_clients=context.num_clients, end=end, name=path.name)


def _script(options: Options, context: _Context) -> ScriptPattern:
    if not options.has("script"):
        raise options.fail("script", '"path/to/file.py:function" (this key is required)')
    return load_script(
        options.table["script"],
        kwargs=dict(options.child("script_args").table),
        num_clients=context.num_clients,
        seed=context.seed,
        source=options.source,
        base_dir=context.base_dir,
    )


_BUILDERS: dict[str, Callable[[Options, _Context], Pattern]] = {
    "always": _always,
    "uniform": _uniform,
    "bernoulli": _bernoulli,
    "markov": _markov,
    "cyclic": _cyclic,
    "diurnal": _diurnal,
    "trace": _trace,
    "script": _script,
}
