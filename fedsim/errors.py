"""fedsim's own error types.

Every mistake a user can make (a bad scenario key, a missing file, a plugin
path that does not resolve) is raised as a :class:`FedsimError`, whose message
is one line naming the file, the key and what was expected. The CLI prints that
line and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class FedsimError(Exception):
    """A user-facing error: its message is the one line the CLI prints."""


class ScenarioError(FedsimError):
    """A scenario value is wrong: names the file, the key and what was expected.

    >>> str(ScenarioError("run.toml", "data.num_clients", "an integer >= 1", got=0))
    'run.toml: data.num_clients: expected an integer >= 1, got 0'
    """

    def __init__(
        self,
        source: str | Path,
        key: str,
        expected: str,
        *,
        got: object = ...,
    ) -> None:
        self.source = str(source)
        self.key = key
        self.expected = expected
        message = f"{self.source}: {key}: expected {expected}"
        if got is not ...:
            message += f", got {got!r}"
        super().__init__(message)


class RunError(FedsimError):
    """A run cannot go on (too many failures, divergence, a bad results directory)."""


class RunInterrupted(RunError):
    """The run stopped at a stop request (Ctrl-C) after ``round``; it can be resumed."""

    def __init__(self, round: int, rounds: int, run_dir: Path, resumable: bool) -> None:
        self.round = round
        self.run_dir = run_dir
        self.resumable = resumable
        where = f"interrupted after round {round} of {rounds}; results so far in {run_dir}"
        if resumable:
            message = f"{where}; continue with: fedsim resume {run_dir}"
        else:
            message = f"{where} (this engine writes no checkpoints: the run cannot be resumed)"
        super().__init__(message)
