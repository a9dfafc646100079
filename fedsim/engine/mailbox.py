"""A same-machine shortcut for what a Ray call carries: one shared-memory file per actor.

A Ray call's argument or return value over 100 KB travels through Ray's object store: a put,
a seal and a fetch, each a round of messages between the worker, the raylet and the store.
On 2 cores that costs about 3 ms for a cohort's 2 MB of replies and 1 ms for a round's 200
KB model, a quarter of what training those 10 small clients as a cohort takes
(docs/benchmarks.md, "Run 9"). When the driver and an actor are on one machine, a call's
payload goes through a file in ``/dev/shm`` that both map instead: the driver writes the
call (its messages, their Contexts and the round's content) there and sends only where it
lies; the actor reads it, serves, and writes its replies in the same place, and returns only
where they lie. Pickle protocol 5 keeps the replies' arrays (a cohort's stacked models) out
of the pickle stream, so they are written once, as raw buffers.

An actor has one call in flight at a time (:class:`~fedsim.engine.ray_grid.RayGrid`
sends the next when it has collected the last), so one area per actor suffices, and each
side copies what it reads before the other writes again. The driver creates the files and
removes them (when the grid shuts down or replaces an actor, and at exit). A mailbox is a
file of mode 0600 under a random name, made with ``O_EXCL``, and an actor opens only such a
file of its own user: what it unpickles comes from its driver. An actor that cannot open
its file (it runs on another machine of a cluster) says so, and its calls go through Ray's
object store as before; so does a call, or a reply, that the file cannot grow to hold (the
pages are reserved before they are written, so a full ``/dev/shm`` is an error to fall
back from, not a SIGBUS).
"""

from __future__ import annotations

import mmap
import os
import pickle
import tempfile
import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np

# Where a span of the file lies: (offset, length in bytes).
Span = tuple[int, int]

_PREFIX = "fedsim-mailbox-"
_ALIGN = 64
_MIN_SIZE = 1 << 20


def _directory() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def _remove_stale(directory: Path) -> None:
    """Remove this user's mailboxes left by drivers that no longer run (killed before
    their exit could remove them)."""
    for path in directory.glob(f"{_PREFIX}*"):
        try:
            if path.stat().st_uid != os.getuid():
                continue
            os.kill(int(path.name.removeprefix(_PREFIX).split("-")[0]), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (ValueError, OSError):  # a live process, or a name not ours to parse
            continue


def _private(fd: int) -> bool:
    """Whether the open file is this user's and nobody else's (a mailbox's calls are
    unpickled: a file someone else could write would run their code)."""
    info = os.fstat(fd)
    return info.st_uid == os.getuid() and not info.st_mode & 0o077


class Mailbox:
    """A shared file mapped in this process, written and read as spans of bytes.

    >>> box = Mailbox.create()
    >>> spans = box.pack({"a": np.arange(3.0), "b": b"x"})
    >>> out = Mailbox.attach(box.path).unpack(spans)
    >>> out["a"].tolist(), out["b"]
    ([0.0, 1.0, 2.0], b'x')
    >>> box.close(), box.path.exists()
    (None, False)
    """

    def __init__(self, path: Path, owner: bool) -> None:
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if owner else 0)
        fd = os.open(path, flags, 0o600)
        if not _private(fd):
            os.close(fd)
            raise PermissionError(f"{path}: not a private file of this user")
        self.path = path
        self._fd = fd
        self._map: mmap.mmap | None = None
        self._finalizer = weakref.finalize(self, _close, fd, path if owner else None)

    @classmethod
    def create(cls) -> Mailbox:
        """A new mailbox of this process (the driver's), deleted at :meth:`close` or exit."""
        directory = _directory()
        _remove_stale(directory)
        path = directory / f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        box = cls(path, owner=True)
        box._grow(_MIN_SIZE)
        return box

    @classmethod
    def attach(cls, path: str | Path) -> Mailbox | None:
        """The mailbox at ``path`` (an actor's side), or None where it is not on this machine
        (or is not a private file of this user)."""
        try:
            return cls(Path(path), owner=False)
        except OSError:
            return None

    # --- raw spans --------------------------------------------------------------

    def _mapped(self, size: int) -> mmap.mmap:
        """The file mapped over at least ``size`` bytes (mapped again after it grew)."""
        if self._map is None or len(self._map) < size:
            current = os.fstat(self._fd).st_size
            if current < size:
                raise ValueError(f"{self.path}: span ends at {size}, the file has {current}")
            if self._map is not None:
                self._map.close()
            self._map = mmap.mmap(self._fd, current)
        return self._map

    def _grow(self, size: int) -> None:
        """Make the file at least ``size`` bytes, its pages reserved: on a full ``/dev/shm``
        (a container's 64 MB, say) that is an OSError here, not a SIGBUS when the map is
        written."""
        current = os.fstat(self._fd).st_size
        if current < size:
            wanted = max(size, 2 * current)
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(self._fd, 0, wanted)
            else:  # macOS: no reservation, and its temporary folder is on disk
                os.ftruncate(self._fd, wanted)

    def write(self, parts: list[memoryview]) -> list[Span]:
        """Lay ``parts`` one after another from the start of the file (growing it)."""
        spans, offset = [], 0
        for part in parts:
            spans.append((offset, part.nbytes))
            offset += -(-part.nbytes // _ALIGN) * _ALIGN
        self._grow(offset)
        target = self._mapped(offset)
        for (start, length), part in zip(spans, parts, strict=True):
            target[start : start + length] = part.cast("B")
        return spans

    def read(self, span: Span) -> np.ndarray:
        """A copy of ``span`` (uint8): the other side may write over it next."""
        start, length = span
        view = np.frombuffer(self._mapped(start + length), np.uint8, length, start)
        copy = view.copy()
        del view  # release the map's buffer, so that it can be mapped again
        return copy

    # --- objects ----------------------------------------------------------------

    def pack(self, obj: Any) -> list[Span]:
        """Pickle ``obj`` into the mailbox: the stream, then its out-of-band buffers
        (numpy arrays, written once as raw bytes)."""
        buffers: list[pickle.PickleBuffer] = []
        stream = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        return self.write([memoryview(stream), *(buffer.raw() for buffer in buffers)])

    def unpack(self, spans: list[Span]) -> Any:
        """The object :meth:`pack` wrote at ``spans``, its arrays copies of the mailbox."""
        stream, *buffers = (self.read(span) for span in spans)
        return pickle.loads(stream.data, buffers=buffers)

    def pack_or_pass(self, obj: Any) -> list[Span] | Any:
        """:meth:`pack` ``obj``, or ``obj`` itself (for Ray to carry) when the mailbox
        cannot grow to hold it; :meth:`unpack_or_pass` tells the two apart."""
        try:
            return self.pack(obj)
        except OSError:
            return _Passed(obj)

    def unpack_or_pass(self, packed: list[Span] | Any) -> Any:
        """What :meth:`pack_or_pass` was given."""
        return packed.obj if isinstance(packed, _Passed) else self.unpack(packed)

    def close(self) -> None:
        """Unmap the file; the process that created it also deletes it."""
        if self._map is not None:
            self._map.close()
            self._map = None
        self._finalizer()


class _Passed:
    """An object that went around the mailbox (through Ray) because it did not fit."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj


def _close(fd: int, path: Path | None) -> None:
    os.close(fd)
    if path is not None:
        path.unlink(missing_ok=True)
