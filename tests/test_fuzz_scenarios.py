"""Mutated scenario files either load or fail with fedsim's own one-line error.

Hypothesis takes valid scenarios (fedsim's ClientApp on digits, a user ClientApp
with FedAU and a Markov pattern, gossip over a topology file, a trace) and
mutates them: a key removed, a value replaced by another TOML value of any
type, an unknown key added, a table replaced by a scalar, or the file's text
itself garbled. Each mutant goes through everything that runs before an engine
starts (``load_scenario`` and ``runner.validate``); the only exception allowed
out is :class:`~fedsim.errors.FedsimError`, whose message is a single line.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedsim.config import load_scenario
from fedsim.errors import FedsimError
from fedsim.simulation import validate

FIXTURES = Path(__file__).parent / "fixtures"
APP = FIXTURES / "faulty_client_app.py"
WORK = Path(tempfile.mkdtemp(prefix="fedsim-fuzz-"))
(WORK / "ring.txt").write_text("0 1\n1 2\n2 3\n3 0\n")
(WORK / "trace.csv").write_text("round,client\n1,0\n1,2\n2,1\n3,3\n")

BASES: list[dict[str, Any]] = [
    {
        "name": "digits",
        "seed": 1,
        "rounds": 3,
        "data": {"dataset": "digits", "num_clients": 4, "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "hidden": [8]},
        "client": {"local_steps": 2, "batch_size": 8, "lr": 0.1},
        "participation": {"pattern": "uniform", "clients_per_round": 2, "dropout": 0.1},
        "strategy": {"name": "fedavg"},
        "engine": {"num_actors": 1, "timeout": 30.0, "max_failures_per_round": 1},
        "evaluate": {"every": 1, "central": True},
        "checkpoint": {"every": 2},
    },
    {
        "rounds": 2,
        "data": {"num_clients": 4},
        "model": {"factory": f"{APP}:make_model"},
        "client": {"app": f"{APP}:app", "config": {"every_sleep_s": 0.0}},
        "participation": {"pattern": "markov", "rates": [0.5, 0.2, 0.9, 0.4], "a": 0.1},
        "strategy": {"name": "fedau", "cutoff": 10},
        "engine": {"max_failure_fraction": 0.5},
    },
    {
        "rounds": 2,
        "data": {"dataset": "digits", "num_clients": 4},
        "model": {"name": "logreg"},
        "participation": {
            "pattern": "bernoulli",
            "rates": {"distribution": "uniform", "low": 0.2, "high": 0.8},
            "latency": {"distribution": "lognormal", "params": {"median": 1.0, "sigma": 0.5}},
            "deadline": 2.0,
        },
        "strategy": {"name": "gossip", "topology_file": "ring.txt"},
    },
    {
        "rounds": 2,
        "data": {"dataset": "synthetic", "num_clients": 4, "alpha": 0.5, "beta": 0.5},
        "model": {"name": "fedau-cnn"},
        "participation": {"pattern": "trace", "trace": "trace.csv", "trace_end": "stop"},
        "strategy": {"name": "flwr:FedAdam", "eta": 0.01},
    },
]

KEY_NAMES = [
    "name", "seed", "rounds", "data", "model", "client", "participation", "strategy",
    "engine", "evaluate", "checkpoint", "dataset", "num_clients", "partition", "alpha",
    "hidden", "factory", "app", "config", "lr", "local_steps", "local_epochs", "pattern",
    "rates", "p_mean", "dropout", "latency", "deadline", "a", "period", "trace", "script",
    "topology", "topology_file", "degree", "proxy_per_class", "kind", "timeout", "every",
    "max_failures_per_round", "max_failure_fraction", "num_actors", "ray_address", "zzz",
]  # fmt: skip

scalars = st.one_of(
    st.integers(min_value=-3, max_value=64),
    st.sampled_from([0, 1, 2**31, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(
        ["labels", "ring", "file", "always", "markov", "x.py:y", f"{APP}:app", "nope.csv", ""]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.sampled_from(KEY_NAMES), inner, max_size=3)
    ),
    max_leaves=8,
)


def paths(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key's path, tables included, in a stable order.

    >>> paths({"a": 1, "b": {"c": 2}})
    [('a',), ('b',), ('b', 'c')]
    """
    found = []
    for key, value in table.items():
        found.append((*prefix, key))
        if isinstance(value, dict):
            found.extend(paths(value, (*prefix, key)))
    return found


def parent(table: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path[:-1]:
        table = table[key]
    return table


@st.composite
def mutants(draw: st.DrawFn) -> str:
    scenario = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        where = paths(scenario)
        if not where:
            break
        path = draw(st.sampled_from(where))
        table = parent(scenario, path)
        operation = draw(st.sampled_from(["replace"] * 4 + ["delete", "add", "rename"]))
        if operation == "delete":
            del table[path[-1]]
        elif operation == "replace":
            table[path[-1]] = draw(values)
        elif operation == "add":
            table[draw(st.sampled_from(KEY_NAMES))] = draw(values)
        else:
            table[draw(st.sampled_from(KEY_NAMES))] = table.pop(path[-1])
    text = tomli_w.dumps(scenario)
    if draw(st.integers(min_value=0, max_value=5)) == 0 and text:  # garble the text itself
        at = draw(st.integers(min_value=0, max_value=len(text) - 1))
        text = text[:at] + draw(st.text(max_size=3)) + text[at + draw(st.integers(0, 3)) :]
    return text


@st.composite
def leaf_mutants(draw: st.DrawFn) -> str:
    """One or two values replaced, tables kept: mutants that get past the first checks."""
    scenario = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        leaves = [p for p in paths(scenario) if not isinstance(parent(scenario, p)[p[-1]], dict)]
        path = draw(st.sampled_from(leaves))
        parent(scenario, path)[path[-1]] = draw(values)
    return tomli_w.dumps(scenario)


def check(text: str) -> None:
    path = WORK / "mutant.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        validate(load_scenario(path))
    except FedsimError as error:
        message = str(error)
        assert message and "\n" not in message, repr(message)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=mutants())
@example(text="rounds = nan\n")
@example(text='rounds = 2\n[data]\nnum_clients = 2\ndataset = "digits"\n[model]\nname = 3\n')
@example(text='rounds = 1\nmodel = {name = "mlp", hidden = [1e9]}\ndata = {dataset = "digits"}\n')
def test_mutated_scenarios_load_or_raise_fedsim_errors(text: str) -> None:
    check(text)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=leaf_mutants())
def test_scenarios_with_wrong_values_load_or_raise_fedsim_errors(text: str) -> None:
    check(text)


def test_the_unmutated_bases_are_valid() -> None:
    for base in BASES:
        check(tomli_w.dumps(base))
        path = WORK / "base.toml"
        path.write_text(tomli_w.dumps(base))
        validate(load_scenario(path))  # raises nothing
