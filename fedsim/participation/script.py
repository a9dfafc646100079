"""A participation pattern written as a Python function in a scenario script.

Some scenarios are easiest to say in code — "clients 0–9 vanish between
rounds 50 and 80", a regional outage, a fleet that grows over time — so a
scenario may name ``script = "path/to/file.py:fn"``. fedsim calls
``fn(round, clients, rng, **script_args)`` once per round, where ``clients``
is the read-only array of all client ids and ``rng`` a numpy Generator seeded
from ``(seed, "participation.script", round)``, so a script that draws only
from ``rng`` gives the same answer for a round however often and in whatever
order it is asked (a resumed run included). It returns the reachable client
ids, or a boolean mask over all clients::

    def outage(round, clients, rng):
        up = rng.random(len(clients)) < 0.9
        if 50 <= round <= 80:
            up[:10] = False
        return up
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.errors import ScenarioError
from fedsim.participation.patterns import check_round
from fedsim.plugins import load_object
from fedsim.seeding import rng

SCRIPT_PURPOSE = "participation.script"
SCRIPT_KEY = "participation.script"


class ScriptPattern:
    """Reachable clients decided by a user function, called once per round asked.

    >>> pattern = ScriptPattern(lambda r, c, g: c[c < r], num_clients=5, seed=0)
    >>> pattern.reachable(2).tolist()
    [0, 1]
    """

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        num_clients: int,
        seed: int,
        kwargs: Mapping[str, Any] | None = None,
        source: str | Path = "<scenario>",
        spec: str = "<function>",
    ) -> None:
        self.function = function
        self.num_clients = num_clients
        self.seed = seed
        self.kwargs = dict(kwargs or {})
        self.source = source
        self.spec = spec
        self.probabilities: np.ndarray | None = None
        self._clients = np.arange(num_clients, dtype=np.int64)
        self._clients.flags.writeable = False

    def reachable(self, round: int) -> np.ndarray:
        rnd = check_round(round)
        result = self.function(
            rnd, self._clients, rng(self.seed, SCRIPT_PURPOSE, rnd), **self.kwargs
        )
        return self._client_ids(result, rnd)

    def _client_ids(self, result: object, rnd: int) -> np.ndarray:
        n = self.num_clients
        expected = (
            f"{self.spec} to return client ids in [0, {n}) or a boolean mask "
            f"of {n} clients (round {rnd})"
        )
        try:
            values = np.asarray(result)
        except Exception:
            values = np.asarray(None)
        if values.dtype == bool and values.shape == (n,):
            return np.flatnonzero(values).astype(np.int64)
        if values.ndim == 1 and values.size == 0:
            return np.zeros(0, dtype=np.int64)
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            got = f"{type(result).__name__} of shape {values.shape} and dtype {values.dtype}"
            raise ScenarioError(self.source, SCRIPT_KEY, expected, got=got)
        unknown = values[(values < 0) | (values >= n)]
        if len(unknown):
            raise ScenarioError(self.source, SCRIPT_KEY, expected, got=unknown[:5].tolist())
        return np.unique(values).astype(np.int64)


def load_script(
    spec: object,
    *,
    kwargs: Mapping[str, Any],
    num_clients: int,
    seed: int,
    source: str | Path,
    base_dir: str | Path,
) -> ScriptPattern:
    """Load ``"file.py:fn"`` and check that it takes ``(round, clients, rng, **kwargs)``."""
    if not isinstance(spec, str):
        raise ScenarioError(source, SCRIPT_KEY, '"path/to/file.py:function"', got=spec)
    function = load_object(spec, base_dir=base_dir, source=source, key=SCRIPT_KEY)
    if not callable(function):
        raise ScenarioError(
            source, SCRIPT_KEY, "a function (round, clients, rng)", got=type(function).__name__
        )
    try:
        inspect.signature(function).bind(1, None, None, **kwargs)
    except TypeError as error:
        arguments = ", ".join(["round", "clients", "rng", *kwargs])
        raise ScenarioError(
            source, SCRIPT_KEY, f"a function taking ({arguments}) ({error})", got=spec
        ) from error
    except ValueError:
        pass  # builtins without a signature: trust them
    return ScriptPattern(
        function, num_clients=num_clients, seed=seed, kwargs=kwargs, source=source, spec=spec
    )
