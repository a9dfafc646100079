"""Typed, range-checked reading of the ``[participation]`` scenario table.

Every participation module reads its keys through :class:`Options`, the scenario's
one table reader (:class:`fedsim.options.Options`) with the ``participation`` prefix
and what only participation needs: a number given per client. A wrong type or an
out-of-range value anywhere in the table stops with the same kind of one-line
message: ``file: participation.<key>: expected X, got Y``. Keys may be nested
(``participation.latency.params.sigma``); a child reader keeps the dotted prefix.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedsim import options
from fedsim.options import check_number, resolve_path

__all__ = ["PREFIX", "Options", "check_number", "resolve_path"]

PREFIX = "participation"


class Options(options.Options):
    """One (sub)table of ``[participation]`` with its file and dotted prefix.

    >>> Options({"a": 0.5}, source="s.toml").probability("a", 0.05)
    0.5
    >>> Options({"a": 2}, source="s.toml").probability("a", 0.05)
    Traceback (most recent call last):
    ...
    fedsim.errors.ScenarioError: s.toml: participation.a: expected a number in [0, 1], got 2
    >>> Options({"b": 1}, source="s.toml").only_keys_of({"a"}, "latency")
    Traceback (most recent call last):
    ...
    fedsim.errors.ScenarioError: s.toml: participation.b: expected one of the keys of latency (a)
    """

    def __init__(
        self, table: Mapping[str, Any], *, source: str | Path, prefix: str = PREFIX
    ) -> None:
        super().__init__(table, source=source, prefix=prefix)

    def only_keys_of(self, allowed: Collection[str], what: str) -> None:
        """Refuse any key not in ``allowed``; ``what`` names the owner of the keys."""
        self.only(allowed, f"one of the keys of {what} ({{known}})")

    def per_client(
        self,
        name: str,
        default: float | None,
        *,
        num_clients: int,
        minimum: float | None = None,
        maximum: float | None = None,
        open_minimum: bool = False,
    ) -> np.ndarray:
        """A number shared by every client or a list of one number per client, as (N,) floats."""
        value = self.table.get(name, default)
        if value is None:
            raise self.fail(name, "a number or a list of one number per client (required)")
        if isinstance(value, list):
            if len(value) != num_clients:
                raise self.fail(name, f"a list of {num_clients} numbers (one per client)", value)

            def entry(v: object) -> float:
                return check_number(
                    v,
                    lambda expected: self.fail(name, f"{expected} in every entry", v),
                    minimum=minimum,
                    maximum=maximum,
                    open_minimum=open_minimum,
                )

            return np.array([entry(v) for v in value], dtype=np.float64)
        number = self.number(
            name, default, minimum=minimum, maximum=maximum, open_minimum=open_minimum
        )
        return np.full(num_clients, number, dtype=np.float64)
