"""MIFA and FedVARP pinned on hand-computed rounds, their stacked store, and checkpoint resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.strategies.base import ServerUpdateStrategy
from fedsim.strategies.client_state import ClientRows, StoredUpdatesStrategy, UpdateStore
from fedsim.strategies.fedau import FedAU
from fedsim.strategies.fedvarp import FedVARP
from fedsim.strategies.mifa import MIFA
from tests.helpers import play

A, B, C = 11, 12, 13
NODES = [A, B, C]


def test_mifa_applies_the_mean_of_every_clients_latest_update(flower_identity: None) -> None:
    strategy = MIFA(num_clients=3)
    # Before anybody's first reply there is nothing to apply.
    assert play(strategy, 1, [1.0, 2.0], {}, NODES) is None
    # Round 2: Δ_a = [2,0], Δ_b = [0,4], c still 0: x + ([2,0] + [0,4] + 0)/3
    new = play(strategy, 2, [1.0, 2.0], {A: [3.0, 2.0], B: [1.0, 6.0]}, NODES)
    assert new == pytest.approx([5 / 3, 10 / 3])
    # Round 3 (from x = [0,0]): a's Δ becomes [0,3]; b keeps [0,4]: mean [0, 7/3].
    assert play(strategy, 3, [0.0, 0.0], {A: [0.0, 3.0]}, NODES) == pytest.approx([0.0, 7 / 3])
    # Round 4: nobody replies; the stored updates are still applied (reference behaviour).
    assert play(strategy, 4, [1.0, 1.0], {}, NODES) == pytest.approx([1.0, 10 / 3])
    # Round 5: c's first update [3,0]: mean ([0,3] + [0,4] + [3,0])/3 = [1, 7/3].
    assert play(strategy, 5, [1.0, 1.0], {C: [4.0, 1.0]}, NODES) == pytest.approx([2.0, 10 / 3])
    assert strategy.client_metrics == {}


def test_mifa_server_lr(flower_identity: None) -> None:
    strategy = MIFA(num_clients=3, server_lr=2.0)
    # [1,2] + 2·[2/3, 4/3]
    new = play(strategy, 1, [1.0, 2.0], {A: [3.0, 2.0], B: [1.0, 6.0]}, NODES)
    assert new == pytest.approx([7 / 3, 14 / 3])


@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_fedvarp_corrects_the_participants_mean(flower_identity: None, server_lr: float) -> None:
    strategy = FedVARP(num_clients=3, server_lr=server_lr)
    # Round 1: stored all 0. v = mean([2,0], [0,4]) = [1,2].
    new = play(strategy, 1, [1.0, 2.0], {A: [3.0, 2.0], B: [1.0, 6.0]}, NODES)
    assert new == pytest.approx([1.0 + server_lr, 2.0 + 2 * server_lr])
    # Round 2 from x = [2,4]: Δ_a = [0,3] (stored [2,0]), Δ_c = [3,0] (stored 0);
    # ȳ = ([2,0] + [0,4] + 0)/3 = [2/3, 4/3]; v = mean([-2,3], [3,0]) + ȳ = [7/6, 17/6].
    new = play(strategy, 2, [2.0, 4.0], {A: [2.0, 7.0], C: [5.0, 4.0]}, NODES)
    assert new == pytest.approx([2.0 + server_lr * 7 / 6, 4.0 + server_lr * 17 / 6])
    # Round 3: nobody replies, the model stays.
    assert play(strategy, 3, [2.0, 4.0], {}, NODES) is None
    # Round 4 from x = [0,0]: Δ_b = [1,1] (stored [0,4]); ȳ = ([0,3] + [0,4] + [3,0])/3;
    # v = [1,-3] + [1, 7/3] = [2, -2/3].
    new = play(strategy, 4, [0.0, 0.0], {B: [1.0, 1.0]}, NODES)
    assert new == pytest.approx([server_lr * 2.0, server_lr * -2 / 3])


@pytest.mark.parametrize("cls", [MIFA, FedVARP])
def test_updates_are_one_stacked_tensor_keyed_by_node_id(
    flower_identity: None, cls: type[StoredUpdatesStrategy]
) -> None:
    big, small = 2**63 - 7, 5
    strategy = cls(num_clients=4)
    play(strategy, 1, [1.0, 1.0, 1.0], {big: [2.0, 1.0, 1.0], small: [1.0, 1.0, 4.0]}, [big, small])
    table = strategy.store.table
    assert table is not None and table.shape == (4, 3) and table.device == strategy.device
    # Replies arrive in sampling order (sorted node ids): small's row first.
    assert table.tolist() == [[0.0, 0.0, 3.0], [1.0, 0.0, 0.0], [0.0] * 3, [0.0] * 3]
    assert strategy.state_dict()["node_ids"] == [small, big]


@pytest.mark.parametrize("cls", [MIFA, FedVARP])
def test_checkpoint_resume_continues_exactly(
    flower_identity: None, tmp_path: Path, cls: type[StoredUpdatesStrategy]
) -> None:
    nodes = [A, B, C, 14]
    generator = np.random.default_rng(1)
    schedule = generator.random((8, len(nodes))) < 0.5
    values = generator.normal(size=(8, len(nodes), 3)).astype(np.float32).tolist()

    def round_of(strategy: StoredUpdatesStrategy, t: int) -> list[float] | None:
        replies = {n: values[t - 1][i] for i, n in enumerate(nodes) if schedule[t - 1][i]}
        return play(strategy, t, [0.5, -1.0, 2.0], replies, nodes)

    uninterrupted = cls(num_clients=4, server_lr=0.7)
    for t in range(1, 5):
        round_of(uninterrupted, t)
    torch.save(uninterrupted.state_dict(), tmp_path / "strategy.pt")
    restored = cls(num_clients=4, server_lr=0.7)
    restored.load_state_dict(torch.load(tmp_path / "strategy.pt", weights_only=True))
    fresh = cls(num_clients=4, server_lr=0.7)
    continued = [round_of(uninterrupted, t) for t in range(5, 9)]
    assert [round_of(restored, t) for t in range(5, 9)] == continued
    assert [round_of(fresh, t) for t in range(5, 9)] != continued


def test_fresh_state_round_trips_and_bad_state_is_refused() -> None:
    strategy = MIFA(num_clients=2)
    state = strategy.state_dict()
    assert state == {"node_ids": [], "rows": None}
    strategy.load_state_dict(state)
    assert strategy.store.table is None
    with pytest.raises(ValueError, match="needs node_ids and rows"):
        strategy.load_state_dict({})
    with pytest.raises(ValueError, match="2 stored rows for 1 node ids"):
        strategy.load_state_dict({"node_ids": [3], "rows": torch.zeros((2, 4))})
    with pytest.raises(ValueError, match="needs num_clients"):
        FedVARP()


def test_client_rows_and_store() -> None:
    rows = ClientRows(2, [40])
    assert rows.rows([7, 40]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="distinct"):
        rows.rows([7, 7])
    with pytest.raises(ValueError, match="num_clients is 2"):
        rows.rows([8])
    store = UpdateStore(3)
    assert store.mean_over_all(2).tolist() == [0.0, 0.0]
    store.swap([9], torch.tensor([[3.0, 6.0]]))
    with pytest.raises(ValueError, match="stored vectors have 2 entries, got 3"):
        store.swap([9], torch.zeros((1, 3)))
    assert store.mean_over_all(2).tolist() == [1.0, 2.0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", [FedAU, MIFA, FedVARP])
def test_cuda_matches_cpu_across_a_checkpoint(
    flower_identity: None, tmp_path: Path, cls: type[ServerUpdateStrategy]
) -> None:
    nodes = [A, B, C, 14]
    generator = np.random.default_rng(2)
    schedule = generator.random((8, len(nodes))) < 0.5
    values = generator.normal(size=(8, len(nodes), 5)).astype(np.float32).tolist()

    def rounds(strategy: ServerUpdateStrategy, first: int, last: int) -> list[list[float] | None]:
        out = []
        for t in range(first, last + 1):
            replies = {n: values[t - 1][i] for i, n in enumerate(nodes) if schedule[t - 1][i]}
            out.append(play(strategy, t, [0.5, -1.0, 2.0, 0.0, 1.0], replies, nodes))
        return out

    on_cpu = rounds(cls(num_clients=5, device="cpu"), 1, 8)
    first = cls(num_clients=5, device="cuda")
    on_cuda = rounds(first, 1, 4)
    if isinstance(first, StoredUpdatesStrategy):
        assert first.store.table is not None and first.store.table.device.type == "cuda"
    torch.save(first.state_dict(), tmp_path / "strategy.pt")
    second = cls(num_clients=5, device="cuda")
    second.load_state_dict(torch.load(tmp_path / "strategy.pt", weights_only=True))
    on_cuda += rounds(second, 5, 8)
    assert len(on_cuda) == len(on_cpu)
    for got, expected in zip(on_cuda, on_cpu, strict=True):
        assert (got is None) == (expected is None)
        if got is not None:
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
