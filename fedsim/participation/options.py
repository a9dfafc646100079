"""Typed, range-checked reading of the ``[participation]`` scenario table.

Every participation module reads its keys through :class:`Options`, so that a
wrong type or an out-of-range value anywhere in the table stops with the same
kind of one-line message: ``file: participation.<key>: expected X, got Y``.
Keys may be nested (``participation.latency.params.sigma``); a child reader
keeps the dotted prefix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.errors import ScenarioError

PREFIX = "participation"


class Options:
    """One (sub)table of ``[participation]`` with its file and dotted prefix.

    >>> Options({"a": 0.5}, source="s.toml").probability("a", 0.05)
    0.5
    >>> Options({"a": 2}, source="s.toml").probability("a", 0.05)
    Traceback (most recent call last):
    ...
    fedsim.errors.ScenarioError: s.toml: participation.a: expected a number in [0, 1], got 2
    """

    def __init__(
        self, table: Mapping[str, Any], *, source: str | Path, prefix: str = PREFIX
    ) -> None:
        self.table = table
        self.source = source
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def fail(self, name: str, expected: str, got: object = ...) -> ScenarioError:
        return ScenarioError(self.source, self.key(name), expected, got=got)

    def has(self, name: str) -> bool:
        return name in self.table

    def only(self, allowed: set[str], what: str) -> None:
        """Refuse any key not in ``allowed``; ``what`` names the owner of the keys."""
        for name in self.table:
            if name not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                raise self.fail(name, f"one of the keys of {what} ({known})")

    def child(self, name: str) -> Options:
        """The subtable ``name`` (empty when absent)."""
        value = self.table.get(name, {})
        if not isinstance(value, Mapping):
            raise self.fail(name, "a table", value)
        return Options(value, source=self.source, prefix=self.key(name))

    def number(
        self,
        name: str,
        default: float | None,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        open_minimum: bool = False,
        open_maximum: bool = False,
    ) -> float:
        value = self.table.get(name, default)
        if value is None:
            raise self.fail(name, "a number (this key is required)")
        return check_number(
            value,
            lambda expected: self.fail(name, expected, value),
            minimum=minimum,
            maximum=maximum,
            open_minimum=open_minimum,
            open_maximum=open_maximum,
        )

    def probability(self, name: str, default: float | None) -> float:
        return self.number(name, default, minimum=0, maximum=1)

    def integer(self, name: str, default: int | None, *, minimum: int | None = None) -> int:
        value = self.table.get(name, default)
        if value is None:
            raise self.fail(name, "an integer (this key is required)")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, "an integer", value)
        if minimum is not None and value < minimum:
            raise self.fail(name, f"an integer >= {minimum}", value)
        return value

    def text(self, name: str, default: str | None, *, choices: Sequence[str] = ()) -> str:
        value = self.table.get(name, default)
        if value is None:
            raise self.fail(name, "a string (this key is required)")
        if not isinstance(value, str):
            raise self.fail(name, "a string", value)
        if choices and value not in choices:
            raise self.fail(name, f"one of {', '.join(choices)}", value)
        return value

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
            return np.array(
                [
                    check_number(
                        v,
                        lambda expected, v=v: self.fail(name, f"{expected} in every entry", v),
                        minimum=minimum,
                        maximum=maximum,
                        open_minimum=open_minimum,
                    )
                    for v in value
                ],
                dtype=np.float64,
            )
        number = self.number(
            name, default, minimum=minimum, maximum=maximum, open_minimum=open_minimum
        )
        return np.full(num_clients, number, dtype=np.float64)


def check_number(
    value: object,
    fail: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_minimum: bool = False,
    open_maximum: bool = False,
) -> float:
    """``value`` as a float if it is a number in range, else raise ``fail(expected)``.

    >>> check_number(0.5, ValueError, minimum=0, maximum=1)
    0.5
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise fail("a number")
    low = minimum is None or (value > minimum if open_minimum else value >= minimum)
    high = maximum is None or (value < maximum if open_maximum else value <= maximum)
    if low and high:
        return float(value)
    if minimum is not None and maximum is not None:
        lo = ("(" if open_minimum else "[") + f"{minimum:g}"
        hi = f"{maximum:g}" + (")" if open_maximum else "]")
        raise fail(f"a number in {lo}, {hi}")
    if minimum is not None:
        raise fail(f"a number {'>' if open_minimum else '>='} {minimum:g}")
    raise fail(f"a number {'<' if open_maximum else '<='} {maximum:g}")


def resolve_path(text: str, base_dir: str | Path) -> Path:
    """``text`` as a path, relative to ``base_dir`` (the scenario file's folder)."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path
