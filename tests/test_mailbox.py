"""The shared-memory mailbox carries any picklable object between two processes' maps of
one file: arrays out of band, the file growing as needed, every read a copy."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from fedsim.engine import mailbox as mailbox_module
from fedsim.engine.mailbox import Mailbox


def test_objects_round_trip_with_their_arrays_through_a_grown_file() -> None:
    box = Mailbox.create()
    other = Mailbox.attach(box.path)
    assert other is not None
    try:
        block = np.arange(600_000, dtype=np.float32).reshape(3, -1)  # 2.4 MB: the file grows
        spans = box.pack({"block": block, "rows": [block[1]], "note": "x" * 1000})
        assert os.path.getsize(box.path) >= block.nbytes > 1 << 20
        got = other.unpack(spans)
        assert np.array_equal(got["block"], block) and np.array_equal(got["rows"][0], block[1])
        assert got["note"] == "x" * 1000 and got["block"].flags.writeable
        # The other side now writes a small answer over the same place: what was read
        # stays as it was (reads are copies).
        answer = other.pack(("ok", np.ones(4)))
        assert box.unpack(answer)[0] == "ok" and got["block"][2, 0] == block[2, 0]
    finally:
        other.close()
        box.close()
    assert not box.path.exists()


def test_an_actors_mailbox_opened_from_another_process() -> None:
    box = Mailbox.create()
    try:
        spans = box.pack(np.arange(5.0))
        code = (
            "import sys, numpy as np; from fedsim.engine.mailbox import Mailbox\n"
            f"box = Mailbox.attach({str(box.path)!r}); data = box.unpack({spans!r})\n"
            "print(box.pack((data * 2, 'back')))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        doubled, word = box.unpack(eval(out))  # the spans printed by the other process
        assert doubled.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0] and word == "back"
        assert box.path.exists()  # the other process's close did not delete the driver's file
    finally:
        box.close()


def test_missing_file_means_no_mailbox_and_dead_drivers_files_are_removed() -> None:
    assert Mailbox.attach("/nonexistent/fedsim-mailbox-1-x") is None
    directory = mailbox_module._directory()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stale = directory / f"fedsim-mailbox-{dead}-stale"
    live = directory / f"fedsim-mailbox-{os.getpid()}-live"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    try:
        Mailbox.create().close()
        assert not stale.exists() and live.exists()
    finally:
        stale.unlink(missing_ok=True)
        live.unlink(missing_ok=True)


def test_only_a_private_file_is_a_mailbox() -> None:
    box = Mailbox.create()
    try:
        assert box.path.stat().st_mode & 0o777 == 0o600
        os.chmod(box.path, 0o644)  # readable, and so maybe written, by others: refused
        assert Mailbox.attach(box.path) is None
        os.chmod(box.path, 0o600)
        attached = Mailbox.attach(box.path)
        assert attached is not None
        attached.close()
    finally:
        box.close()


def test_what_a_full_dev_shm_cannot_hold_is_passed_around_the_mailbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    box = Mailbox.create()
    try:
        small = box.pack_or_pass([1, 2])
        assert isinstance(small, list) and box.unpack_or_pass(small) == [1, 2]

        def full(fd: int, offset: int, length: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "posix_fallocate", full)
        big = np.ones(1 << 20)  # 8 MB: more than the file has
        passed = box.pack_or_pass(big)
        assert not isinstance(passed, list) and box.unpack_or_pass(passed) is big
        assert os.path.getsize(box.path) < big.nbytes  # nothing was written past the end
    finally:
        box.close()
