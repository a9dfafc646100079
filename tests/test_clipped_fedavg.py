"""Tests of the guide's example strategy: its math on numbers worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.plugins import load_object

ROOT = Path(__file__).resolve().parents[1]  # the repository: tests/ beside strategies/


def load(name: str):
    spec = f"strategies/clipped_fedavg.py:{name}"
    return load_object(spec, base_dir=ROOT, source="test", key=name)


def test_long_updates_are_clipped_and_short_ones_kept() -> None:
    clip_updates = load("clip_updates")
    updates = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # norms 5 and 0.5
    np.testing.assert_allclose(clip_updates(updates, 1.0), [[0.6, 0.8], [0.3, 0.4]], rtol=1e-6)


def test_server_update_weights_clipped_updates_by_examples() -> None:
    strategy = load("ClippedFedAvg")(max_norm=1.0)
    x = torch.tensor([1.0, 1.0])
    y = torch.tensor([[4.0, 5.0], [1.0, 1.5]])  # updates (3, 4) → (0.6, 0.8) and (0, 0.5)
    new = strategy.server_update(1, x, y, [7, 8], np.array([1.0, 3.0]))
    # x + 1/4 · (0.6, 0.8) + 3/4 · (0, 0.5) = (1.15, 1.575)
    assert new.tolist() == pytest.approx([1.15, 1.575])
    assert strategy.server_update(2, x, y[:0], [], np.zeros(0)) is None
