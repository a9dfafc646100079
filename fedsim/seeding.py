"""Explicit, layered randomness.

A scenario has one integer seed. Every consumer of randomness (a partitioner,
a participation pattern, a client's data stream, model initialisation) asks for
its own independent stream derived from ``(seed, purpose, *ids)`` with
:class:`numpy.random.SeedSequence`; no code in fedsim touches a global RNG.
Because a stream depends only on its key, results do not change with the number
of Ray actors, the engine, or a resume in the middle of a run.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _purpose_word(purpose: str) -> int:
    # A stable 32-bit word per purpose name (Python's hash() is salted per process).
    return int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:4], "little")


def seed_sequence(seed: int, purpose: str, *ids: int) -> np.random.SeedSequence:
    """The seed sequence of one independent stream.

    >>> a = seed_sequence(7, "data", 3).generate_state(1)[0]
    >>> b = seed_sequence(7, "data", 4).generate_state(1)[0]
    >>> bool(a != b)
    True
    """
    if any(i < 0 for i in ids):
        raise ValueError(f"stream ids must be non-negative, got {ids}")
    return np.random.SeedSequence([seed, _purpose_word(purpose), *ids])


def rng(seed: int, purpose: str, *ids: int) -> np.random.Generator:
    """A numpy generator for the stream ``(seed, purpose, *ids)``.

    >>> float(rng(1, "x").random()) == float(rng(1, "x").random())
    True
    """
    return np.random.default_rng(seed_sequence(seed, purpose, *ids))


def torch_generator(seed: int, purpose: str, *ids: int) -> torch.Generator:
    """A CPU torch generator for the stream ``(seed, purpose, *ids)``."""
    state = seed_sequence(seed, purpose, *ids).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]) << 32 | int(state[1]))
    return generator
