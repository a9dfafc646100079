"""One typed reader for the tables of a scenario file.

A scenario is TOML, so every value arrives untyped: ``lr = "fast"``, ``num_clients
= true`` or ``alpha = nan`` are all valid TOML. Each table is read through
:class:`Options`, which knows the table, the file it came from and the table's
dotted key prefix, and whose getters check the type and range of one key and
fail with the one-line :class:`~fedsim.errors.ScenarioError` the CLI prints:
``file: prefix.key: expected X, got Y``.

It exists once so that the common tables (:mod:`fedsim.config`), a participation
pattern's table (:mod:`fedsim.participation`), a data set's extra ``[data]`` keys
(:mod:`fedsim.datasets`) and a built-in model's options (:mod:`fedsim.models`)
agree on what a number, an integer or a path is: a boolean is never an integer,
NaN is never a number, a relative path is relative to the scenario file's folder.
What differs between them is only the wording of some messages, which callers
choose: the text listing the known keys (:meth:`Options.only`), the note on a
missing required key (``required``), and ``expected=`` on a getter, one text for
every failure of that key. A domain that needs more (a value per client, a data
set's seed) adds it in a small subclass beside the domain.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

from fedsim.errors import ScenarioError

T = TypeVar("T")

REQUIRED = "this key is required"


class Options:
    """One table of a scenario: typed, range-checked access to its keys.

    ``prefix`` is the table's dotted key (``""`` for the top level), ``base_dir`` the
    folder relative paths start from, and ``required`` the note a missing required
    key's message ends with.

    >>> opts = Options({"lr": 0.1, "steps": True}, source="run.toml", prefix="client")
    >>> opts.number("lr", 0.01, minimum=0.0, open_minimum=True), opts.integer("epochs", 1)
    (0.1, 1)
    >>> opts.integer("steps", 1)
    Traceback (most recent call last):
    ...
    fedsim.errors.ScenarioError: run.toml: client.steps: expected an integer, got True
    >>> opts.only({"lr", "epochs"})
    Traceback (most recent call last):
    ...
    fedsim.errors.ScenarioError: run.toml: client.steps: expected one of the known keys (epochs, lr)
    """

    def __init__(
        self,
        table: Mapping[str, Any],
        *,
        source: str | Path,
        prefix: str = "",
        base_dir: str | Path | None = None,
        required: str = REQUIRED,
    ) -> None:
        self.table = table
        self.source = source
        self.prefix = prefix
        self.base_dir = Path() if base_dir is None else Path(base_dir)
        self.required = required

    # ------------------------------------------------------------------ keys and errors

    def key(self, name: str) -> str:
        """The dotted key of ``name`` in this table, as messages name it."""
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, expected: str, got: object = ...) -> ScenarioError:
        """The error to raise for key ``name``: ``file: prefix.name: expected ..., got ...``."""
        return ScenarioError(self.source, self.key(name), expected, got=got)

    def has(self, name: str) -> bool:
        return name in self.table

    def only(
        self,
        allowed: Collection[str],
        expected: str = "one of the known keys ({known})",
        *,
        none: str = "none",
    ) -> None:
        """Refuse any key not in ``allowed``.

        ``expected`` is the message's expected-text, in which ``{known}`` becomes the
        allowed keys (sorted when ``allowed`` is a set, in order when it is a sequence)
        or ``none`` when there are none.

        >>> Options({"x": 1}, source="s", prefix="m").only((), "a key of m ({known})", none="-")
        Traceback (most recent call last):
        ...
        fedsim.errors.ScenarioError: s: m.x: expected a key of m (-)
        """
        listed = allowed if isinstance(allowed, Sequence) else sorted(allowed)
        for name in self.table:
            if name not in allowed:
                known = ", ".join(listed) or none
                raise self.fail(name, expected.replace("{known}", known))

    # ------------------------------------------------------------------ tables

    def subtable(self, name: str) -> dict[str, Any]:
        """The table ``name`` as a dict (empty when absent)."""
        value = self.table.get(name, {})
        if not isinstance(value, Mapping):
            raise self.fail(name, "a table", value)
        return value if isinstance(value, dict) else dict(value)

    def child(self, name: str) -> Self:
        """A reader of the table ``name`` (empty when absent), its prefix one key deeper."""
        value = self.table.get(name, {})
        if not isinstance(value, Mapping):
            raise self.fail(name, "a table", value)
        reader = copy.copy(self)
        reader.table = value
        reader.prefix = self.key(name)
        return reader

    # ------------------------------------------------------------------ scalars

    def integer(
        self,
        name: str,
        default: int | None,
        *,
        minimum: int | None = None,
        expected: str | None = None,
    ) -> int:
        """An integer (never a boolean), at least ``minimum``; ``default=None``: required.

        ``expected``, when given, is the text of every failure (with the value, even None).
        """
        value = self.table.get(name, default)
        if value is None and expected is None:
            raise self.fail(name, f"an integer ({self.required})")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, expected or "an integer", value)
        if minimum is not None and value < minimum:
            raise self.fail(name, expected or f"an integer >= {minimum}", value)
        return value

    def optional_integer(self, name: str, *, minimum: int | None = None) -> int | None:
        """An integer as :meth:`integer` checks it, or None when the key is absent."""
        return self.integer(name, None, minimum=minimum) if name in self.table else None

    def number(
        self,
        name: str,
        default: float | None,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        open_minimum: bool = False,
        open_maximum: bool = False,
        finite: bool = False,
        expected: str | None = None,
    ) -> float:
        """A number (int or float, not a boolean, not NaN; not infinite when ``finite``)
        within the bounds, which ``open_minimum``/``open_maximum`` exclude; as a float.

        ``default=None`` makes the key required; ``expected``, when given, is the text of
        every failure (with the value, even None).

        >>> Options({"p": 1.5}, source="s.toml").number("p", None, minimum=0.0, maximum=1.0)
        Traceback (most recent call last):
        ...
        fedsim.errors.ScenarioError: s.toml: p: expected a number in [0.0, 1.0], got 1.5
        """
        value = self.table.get(name, default)
        if value is None and expected is None:
            raise self.fail(name, f"a number ({self.required})")
        return check_number(
            value,
            lambda text: self.fail(name, expected or text, value),
            minimum=minimum,
            maximum=maximum,
            open_minimum=open_minimum,
            open_maximum=open_maximum,
            finite=finite,
        )

    def probability(self, name: str, default: float | None) -> float:
        """A number in [0, 1]."""
        return self.number(name, default, minimum=0, maximum=1)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.table.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, "true or false", value)
        return value

    def text(
        self,
        name: str,
        default: str | None,
        *,
        choices: Sequence[str] = (),
        nonempty: bool = False,
        expected: str | None = None,
    ) -> str:
        """A string (not empty when ``nonempty``), one of ``choices`` when there are any;
        ``default=None``: required.

        ``expected``, when given, is the text of a wrong value's failure (type, emptiness
        or choice); a missing required key still says ``required``.
        """
        value = self.table.get(name, default)
        if value is None:
            raise self.fail(name, f"a string ({self.required})")
        if not isinstance(value, str) or (nonempty and not value):
            raise self.fail(name, expected or "a string", value)
        if choices and value not in choices:
            raise self.fail(name, expected or f"one of {', '.join(choices)}", value)
        return value

    def optional_text(self, name: str) -> str | None:
        """A string as :meth:`text` checks it, or None when the key is absent."""
        return self.text(name, None) if name in self.table else None

    def choice(self, name: str, default: T, choices: Sequence[T]) -> T:
        """One of ``choices`` (strings or numbers; a boolean matches none), as listed there.

        >>> Options({"groups": 3}, source="s.toml", prefix="model").choice("groups", 2, (1, 2, 4))
        Traceback (most recent call last):
        ...
        fedsim.errors.ScenarioError: s.toml: model.groups: expected one of 1, 2, 4, got 3
        """
        value = self.table.get(name, default)
        if not isinstance(value, bool):
            for option in choices:
                if value == option:
                    return option
        listed = ", ".join(f'"{c}"' if isinstance(c, str) else str(c) for c in choices)
        raise self.fail(name, f"one of {listed}", value)

    # ------------------------------------------------------------------ lists and paths

    def int_list(self, name: str, default: Sequence[int], *, minimum: int = 1) -> list[int]:
        """A list of integers (never booleans), each at least ``minimum``."""
        value = self.table.get(name, default)
        ok = isinstance(value, list | tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value
        )
        if not ok:
            raise self.fail(name, f"a list of integers >= {minimum}", value)
        return list(value)

    def path(self, name: str, expected: str, *, folder: bool) -> Path:
        """The existing folder (or file) ``name`` names, relative to ``base_dir``; required.

        ``expected`` says what the path holds: messages read ``a path to {expected}``.
        """
        value = self.table.get(name)
        if value is None:
            raise self.fail(name, f"a path to {expected} ({self.required})")
        if not isinstance(value, str) or not value:
            raise self.fail(name, f"a path to {expected}", value)
        path = resolve_path(value, self.base_dir)
        if not (path.is_dir() if folder else path.is_file()):
            raise self.fail(name, f"a path to {expected}", str(path))
        return path


def check_number(
    value: object,
    fail: Callable[[str], Exception],
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_minimum: bool = False,
    open_maximum: bool = False,
    finite: bool = False,
) -> float:
    """``value`` as a float if it is a number in range, else raise ``fail(expected)``.

    >>> check_number(0.5, ValueError, minimum=0, maximum=1)
    0.5
    >>> check_number(float("inf"), ValueError, minimum=0, finite=True)
    Traceback (most recent call last):
    ...
    ValueError: a number
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or (finite and math.isinf(value))
    ):
        raise fail("a number")
    low = minimum is None or (value > minimum if open_minimum else value >= minimum)
    high = maximum is None or (value < maximum if open_maximum else value <= maximum)
    if not (low and high):
        raise fail(number_text(minimum, maximum, open_minimum, open_maximum))
    return float(value)


def number_text(
    minimum: float | None,
    maximum: float | None = None,
    open_minimum: bool = False,
    open_maximum: bool = False,
) -> str:
    """What a number within these bounds is called in messages.

    >>> number_text(0.0, 1.0, open_maximum=True), number_text(0, open_minimum=True)
    ('a number in [0.0, 1.0)', 'a number > 0')
    """
    if minimum is not None and maximum is not None:
        lo = ("(" if open_minimum else "[") + f"{minimum}"
        hi = f"{maximum}" + (")" if open_maximum else "]")
        return f"a number in {lo}, {hi}"
    if minimum is not None:
        return f"a number {'>' if open_minimum else '>='} {minimum}"
    if maximum is not None:
        return f"a number {'<' if open_maximum else '<='} {maximum}"
    return "a number"


def resolve_path(text: str, base_dir: str | Path) -> Path:
    """``text`` as a path, relative to ``base_dir`` (the scenario file's folder).

    >>> resolve_path("rates.csv", "scenarios"), resolve_path("/data/x.npz", "scenarios")
    (PosixPath('scenarios/rates.csv'), PosixPath('/data/x.npz'))
    """
    path = Path(text).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


# --- durations of simulated time ([system], a time-driven pattern) -------------------

_UNITS = {"ms": 1e-3, "s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z]+)\s*$")
DURATION_TEXT = 'a duration with units, such as "90 s", "2 min" or "1.5 h" (ms, s, min, h, d)'


def parse_duration(value: object) -> float | None:
    """Seconds of a duration written with units; None when ``value`` is not one.

    >>> parse_duration("90 s"), parse_duration("1.5h"), parse_duration("250 ms")
    (90.0, 5400.0, 0.25)
    >>> parse_duration(90), parse_duration("90"), parse_duration("2 weeks")
    (None, None, None)
    """
    if not isinstance(value, str):
        return None
    match = _DURATION.match(value)
    if match is None or match.group(2) not in _UNITS:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]


def read_duration(options: Options, name: str) -> float:
    """The duration ``name`` in seconds, > 0, units required."""
    seconds = parse_duration(options.table.get(name))
    if seconds is None or not seconds > 0 or math.isinf(seconds):
        raise options.fail(name, f"{DURATION_TEXT} (> 0)", options.table.get(name))
    return seconds
