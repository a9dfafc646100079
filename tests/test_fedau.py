"""FedAU: ω on hand-written participation sequences, the exact update, lazy = eager = Algorithm 2.

Every strategy round goes through real Flower messages (configure_train, then
replies built with ``Message(content, reply_to=...)``, then aggregate_train),
except in the property tests, which call ``server_update`` directly for speed.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.strategies.fedau import FedAU, Intervals, eager_round, parse_cutoff
from tests.helpers import play

A, B, C, D = 11, 12, 13, 14


def omegas_of(strategy: FedAU) -> dict[int, float]:
    return {n: m["omega"] for n, m in strategy.client_metrics.items()}


def test_three_clients_omega_and_exact_update(flower_identity: None) -> None:
    strategy = FedAU(num_clients=3)
    nodes = [A, B, C]
    # Round 1: a and b reply, no interval completed yet: ω = 1 for both.
    # x + (1/3)(1·[2,0] + 1·[0,4]) = [1,2] + [2/3, 4/3]
    new = play(strategy, 1, [1.0, 2.0], {A: [3.0, 2.0], B: [1.0, 6.0]}, nodes)
    assert new == pytest.approx([5 / 3, 10 / 3])
    assert omegas_of(strategy) == {A: 1.0, B: 1.0}
    # Round 2: only a (intervals a: [1]); b and c reachable but silent.
    play(strategy, 2, [0.0, 0.0], {A: [1.0, 1.0]}, nodes)
    assert omegas_of(strategy) == {A: 1.0}
    # Round 3: a (intervals [1, 1]) and b (intervals [1]); b then records 2.
    play(strategy, 3, [0.0, 0.0], {A: [1.0, 1.0], B: [1.0, 1.0]}, nodes)
    assert omegas_of(strategy) == {A: 1.0, B: 1.0}
    # Round 4: all three; b's intervals [1, 2] give 1.5; c has none yet: 1.
    # Δ = [3,0], [0,2], [0,-3]: x + (1/3)(1·[3,0] + 1.5·[0,2] + 1·[0,-3]) = [1,2] + [1, 0]
    replies = {A: [4.0, 2.0], B: [1.0, 4.0], C: [1.0, -1.0]}
    assert play(strategy, 4, [1.0, 2.0], replies, nodes) == pytest.approx([2.0, 2.0])
    assert omegas_of(strategy) == {A: 1.0, B: 1.5, C: 1.0}
    # Round 5: c alone; its one interval (rounds 1-4) has length 4.
    # x + (1/3)·4·[3, 0] = [4, 0]
    assert play(strategy, 5, [0.0, 0.0], {C: [3.0, 0.0]}, nodes) == pytest.approx([4.0, 0.0])
    assert omegas_of(strategy) == {C: 4.0}


def test_server_lr_scales_the_update(flower_identity: None) -> None:
    # Round 1 of the test above with η_g = 2: [1,2] + 2·[2/3, 4/3]
    strategy = FedAU(num_clients=3, server_lr=2.0)
    new = play(strategy, 1, [1.0, 2.0], {A: [3.0, 2.0], B: [1.0, 6.0]}, [A, B, C])
    assert new == pytest.approx([7 / 3, 14 / 3])


@pytest.mark.parametrize(
    ("cutoff", "omega_a", "omega_b", "update", "never_omega"),
    [
        # K = 3: a's absence in rounds 2-7 records intervals 3 and 3 (cut at rounds 4 and 7):
        # round 8: (1+3+3)/3, round 9: (1+3+3+1)/4. b, absent in rounds 1-8, records 3 and 3
        # (rounds 3 and 6), gap 2: ω = 3. Round 9, N = 4: (1/4)(2·[3,0] + 3·[0,3]) = [1.5, 2.25].
        # d never replies: intervals cut at rounds 3, 6, 9, so ω would be 3 in round 10.
        (3, [1.0, 7 / 3, 2.0], 3.0, [1.5, 2.25], 3.0),
        # K = ∞: a's intervals [1] then [1, 7]; b has none: 1. (1/4)(4·[3,0] + [0,3]) = [3, 0.75].
        ("inf", [1.0, 1.0, 4.0], 1.0, [3.0, 0.75], 1.0),
    ],
)
def test_cutoff_and_a_client_that_never_participates(
    flower_identity: None,
    cutoff: int | str,
    omega_a: list[float],
    omega_b: float,
    update: list[float],
    never_omega: float,
) -> None:
    strategy = FedAU(num_clients=4, cutoff=cutoff)
    nodes = [A, B, C, D]
    seen_a = []
    for server_round in range(1, 10):
        replies = {}
        if server_round in (1, 8, 9):
            replies[A] = [3.0, 0.0]
        if server_round == 9:
            replies[B] = [0.0, 3.0]
        if server_round == 5:
            replies[C] = [1.0, 1.0]
        new = play(strategy, server_round, [0.0, 0.0], replies, nodes)
        if A in replies:
            seen_a.append(strategy.client_metrics[A]["omega"])
    assert seen_a == pytest.approx(omega_a)
    assert omegas_of(strategy) == pytest.approx({A: omega_a[-1], B: omega_b})
    assert new == pytest.approx(update)
    assert strategy.omega_of(D, 10) == pytest.approx(never_omega)
    assert D not in strategy.state_dict()["node_ids"]


def test_round_without_replies_keeps_the_model_and_advances_the_clock(
    flower_identity: None,
) -> None:
    strategy = FedAU(num_clients=2)
    play(strategy, 1, [0.0], {A: [1.0]}, [A, B])
    assert play(strategy, 2, [0.0], {}, [A, B]) is None
    assert play(strategy, 3, [0.0], {}, [A]) is None
    play(strategy, 4, [0.0], {A: [1.0]}, [A, B])  # ω = 1 (intervals [1]), records 3
    assert omegas_of(strategy) == {A: 1.0}
    play(strategy, 5, [0.0], {A: [1.0]}, [A, B])
    assert omegas_of(strategy) == {A: 2.0}  # intervals [1, 3]


def test_node_ids_are_arbitrary_and_at_most_num_clients(flower_identity: None) -> None:
    big, small, other = 2**63 - 7, 5, 9_000_000_001
    strategy = FedAU(num_clients=2)
    play(strategy, 1, [0.0], {big: [1.0], small: [1.0]}, [big, small, other])
    play(strategy, 3, [0.0], {big: [1.0]}, [big, small, other])
    assert omegas_of(strategy) == {big: 1.0}
    play(strategy, 4, [0.0], {big: [1.0]}, [big, small, other])
    assert omegas_of(strategy) == {big: 1.5}  # intervals [1, 2]
    with pytest.raises(ValueError, match="num_clients is 2"):
        play(strategy, 5, [0.0], {other: [1.0]}, [big, small, other])


def test_replayed_round_is_refused(flower_identity: None) -> None:
    strategy = FedAU(num_clients=2)
    play(strategy, 2, [0.0], {A: [1.0]}, [A])
    with pytest.raises(ValueError, match="not after"):
        play(strategy, 2, [0.0], {A: [1.0]}, [A])
    with pytest.raises(ValueError, match="not after"):
        strategy.omega_of(A, 2)
    assert strategy.omega_of(A, 3) == 2.0  # interval [2] (rounds 1-2)


def test_checkpoint_resume_continues_exactly(flower_identity: None, tmp_path: Path) -> None:
    nodes = [A, B, C, D]
    generator = np.random.default_rng(0)
    schedule = generator.random((10, len(nodes))) < 0.4
    values = generator.normal(size=(10, len(nodes), 3)).astype(np.float32).tolist()

    def round_of(strategy: FedAU, t: int) -> tuple[list[float] | None, dict[int, float]]:
        replies = {n: values[t - 1][i] for i, n in enumerate(nodes) if schedule[t - 1][i]}
        return play(strategy, t, [0.5, -1.0, 2.0], replies, nodes), omegas_of(strategy)

    uninterrupted = FedAU(num_clients=5, cutoff=2)
    for t in range(1, 6):
        round_of(uninterrupted, t)
    torch.save(uninterrupted.state_dict(), tmp_path / "strategy.pt")
    restored = FedAU(num_clients=5, cutoff=2)
    restored.load_state_dict(torch.load(tmp_path / "strategy.pt", weights_only=True))
    fresh = FedAU(num_clients=5, cutoff=2)
    outcomes = [(round_of(uninterrupted, t), round_of(restored, t)) for t in range(6, 11)]
    assert all(a == b for a, b in outcomes)
    assert any(m != {n: 1.0 for n in m} for (_, m), _ in outcomes)  # ω ≠ 1 was exercised
    assert [round_of(fresh, t) for t in range(6, 11)] != [a for a, _ in outcomes]


def test_load_state_dict_rejects_bad_state() -> None:
    with pytest.raises(ValueError, match="lacks"):
        FedAU(num_clients=2).load_state_dict({"node_ids": []})
    state = {"node_ids": [1, 2, 3], "last_round": [0] * 3, "gap": [0] * 3}
    with pytest.raises(ValueError, match="num_clients is 2"):
        FedAU(num_clients=2).load_state_dict({**state, "count": [0] * 3, "total": [0] * 3})


def test_options() -> None:
    assert [parse_cutoff(v) for v in (None, "inf", "Infinity", float("inf"), 2, 50)] == [
        None,
        None,
        None,
        None,
        2,
        50,
    ]
    for bad in (1, 0, -3, 2.5, True, "fifty", float("-inf")):
        with pytest.raises(ValueError, match="cutoff must be"):
            parse_cutoff(bad)
    with pytest.raises(ValueError, match="fedavg with rule 'all'"):
        parse_cutoff(1)
    with pytest.raises(ValueError, match="needs num_clients"):
        FedAU()


# --- the three forms of ω agree -------------------------------------------------------------

cutoffs = st.one_of(st.none(), st.integers(min_value=2, max_value=8))


def recursion_omegas(participation: list[bool], cutoff: int | None) -> list[Fraction]:
    """The paper's Algorithm 2, rounds numbered from 0: the ω of each participating round."""
    omega, m, s = Fraction(1), 0, 0
    used = []
    for t, took_part in enumerate(participation):
        if t >= 1:
            s += 1  # s counts round t - 1
            if participation[t - 1] or s == cutoff:
                omega = Fraction(s) if m == 0 else (m * omega + s) / (m + 1)
                m += 1
                s = 0
        if took_part:
            used.append(omega)
    return used


def eager_omegas(participation: np.ndarray, cutoff: int | None) -> list[dict[int, float]]:
    """Per round, ω of the participating columns, from the eager interval-mean form."""
    stats = Intervals.start(participation.shape[1])
    used = []
    for took_part in participation:
        omega, stats = eager_round(stats, took_part, cutoff)
        used.append({int(n): float(omega[n]) for n in np.flatnonzero(took_part)})
    return used


def test_recursion_and_interval_forms_on_a_hand_sequence() -> None:
    # Participation in rounds 0, 3, 4 (K = ∞): ω 1, then 1 (intervals [1]), then 2 ([1, 3]).
    sequence = [True, False, False, True, True]
    assert recursion_omegas(sequence, None) == [1, 1, 2]
    assert [d[0] for d in eager_omegas(np.array([sequence]).T, None) if d] == [1.0, 1.0, 2.0]


@settings(max_examples=300, deadline=None)
@given(participation=st.lists(st.booleans(), min_size=1, max_size=80), cutoff=cutoffs)
def test_recursion_equals_interval_mean(participation: list[bool], cutoff: int | None) -> None:
    expected = [float(w) for w in recursion_omegas(participation, cutoff)]
    eager = [d[0] for d in eager_omegas(np.array([participation]).T, cutoff) if d]
    assert eager == expected


@settings(max_examples=150, deadline=None)
@given(
    participation=st.integers(1, 6).flatmap(
        lambda c: st.lists(st.lists(st.booleans(), min_size=c, max_size=c), min_size=1, max_size=40)
    ),
    cutoff=cutoffs,
)
def test_lazy_strategy_equals_eager_form(
    participation: list[list[bool]], cutoff: int | None
) -> None:
    matrix = np.array(participation, dtype=bool)
    node_ids = [1_000 + 7 * c for c in range(matrix.shape[1])]
    strategy = FedAU(num_clients=matrix.shape[1], cutoff=cutoff)
    x = torch.zeros(2)
    eager = eager_omegas(matrix, cutoff)
    for t, (took_part, expected) in enumerate(zip(matrix, eager, strict=True), 1):
        replying = [node_ids[c] for c in np.flatnonzero(took_part)]
        strategy.client_metrics = {}
        strategy.server_update(
            t, x, torch.ones((len(replying), 2)), replying, np.ones(len(replying))
        )
        assert omegas_of(strategy) == {node_ids[c]: w for c, w in expected.items()}
