"""Where a command writes, checked before it starts: one line when it cannot.

``--out`` naming an existing file, a place that cannot hold a directory (``/proc``)
or one this user cannot write gets a :class:`~fedsim.errors.FedsimError` naming the
option, never a traceback half-way through a run.

>>> output_directory(Path("/dev/null"), "--out")
Traceback (most recent call last):
...
fedsim.errors.FedsimError: --out: /dev/null exists and is not a directory
"""

from __future__ import annotations

import os
from pathlib import Path

from fedsim.errors import FedsimError


def output_directory(path: Path, option: str) -> Path:
    """Create the directory ``path`` (with its parents) if missing, or say why not."""
    if path.exists() and not path.is_dir():
        raise FedsimError(f"{option}: {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise FedsimError(f"{option}: cannot create directory {path} ({reason})") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise FedsimError(f"{option}: {path} is not writable")
    return path


def new_output_directory(path: Path, option: str) -> list[Path]:
    """:func:`output_directory`, returning the directories it created (deepest first)
    for :func:`remove_if_empty` when the command then fails before writing."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    output_directory(path, option)
    return missing


def remove_if_empty(directories: list[Path]) -> None:
    """Remove directories that :func:`new_output_directory` made and nothing filled."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


def output_file(path: Path, option: str) -> Path:
    """``path`` may be written (an existing regular file is replaced); its directory
    is created if missing."""
    if path.is_dir():
        raise FedsimError(f"{option}: {path} is a directory, not a file")
    if path.exists() and not path.is_file():
        raise FedsimError(f"{option}: {path} exists and is not a regular file")
    output_directory(path.parent if str(path.parent) else Path("."), option)
    return path
