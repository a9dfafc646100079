"""Decentralised runs end to end: a scenario file → Ray actors → node models → result tables.

Eight digits nodes on a ring, Bernoulli(0.8) participation, three rounds of two
local steps, once with plain gossip and once with variance-corrected gossip
(Tian et al. 2024, https://arxiv.org/abs/2404.04616), both from independent
Xavier initialisations.
"""

from __future__ import annotations

import pandas as pd
import pytest
import tomli_w

from fedsim.analysis import Run, load_run
from fedsim.config import load_scenario
from fedsim.simulation import run_scenario

NODES, ROUNDS = 8, 3
STRATEGIES = ("gossip", "gossip-vc")


def gossip_scenario(strategy: str) -> dict:
    return {
        "name": f"e2e-{strategy}",
        "seed": 3,
        "rounds": ROUNDS,
        "data": {"dataset": "digits", "num_clients": NODES, "partition": "iid"},
        "model": {"name": "mlp", "hidden": [32]},
        "client": {"local_steps": 2, "batch_size": 16, "lr": 0.05},
        "participation": {
            "pattern": "bernoulli",
            "rates": {"distribution": "constant", "value": 0.8},
        },
        "strategy": {"name": strategy, "topology": "ring", "init": "independent"},
        "engine": {"num_actors": 1},
        "evaluate": {"every": 1},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> dict[str, Run]:
    """Both strategies, run once for every test of this module."""
    root = tmp_path_factory.mktemp("gossip-e2e")
    out: dict[str, Run] = {}
    for strategy in STRATEGIES:
        path = root / f"{strategy}.toml"
        path.write_text(tomli_w.dumps(gossip_scenario(strategy)))
        run_dir, _ = run_scenario(load_scenario(path), root / strategy)
        out[strategy] = load_run(run_dir)
    return out


def aggregate(run: Run, phase: str, metric: str) -> pd.Series:
    """The round-indexed values of an aggregate (client-less) metric."""
    m = run.metrics
    rows = m[(m.phase == phase) & m.client.isna() & (m.metric == metric)]
    return rows.set_index("round")["value"]


def per_node(run: Run, metric: str) -> pd.DataFrame:
    """Client × round table of each node's own model on the central test set."""
    m = run.metrics
    rows = m[(m.phase == "central") & m.client.notna() & (m.metric == metric)]
    return rows.pivot(index="client", columns="round", values="value")


def replied(run: Run) -> pd.DataFrame:
    """Client × round booleans: the node trained (was up) in that round."""
    table = run.participation.pivot(index="client", columns="round", values="replied")
    full = table.reindex(index=range(NODES), columns=range(1, ROUNDS + 1))
    return full.fillna(False).astype(bool)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_node_and_the_spread_are_evaluated(runs: dict[str, Run], strategy: str) -> None:
    run = runs[strategy]
    for metric in ("accuracy", "loss"):
        table = per_node(run, metric)
        assert list(table.index) == list(range(NODES))
        assert list(table.columns) == list(range(1, ROUNDS + 1))
        assert table.notna().all().all()
        for stat in ("mean", "min", "max", "std"):
            assert list(aggregate(run, "central", f"node_{metric}_{stat}").index) == [1, 2, 3]
        mean = aggregate(run, "central", f"node_{metric}_mean")
        assert mean.to_numpy() == pytest.approx(table.mean().to_numpy())
        assert (aggregate(run, "central", f"node_{metric}_min") == table.min()).all()
        assert (aggregate(run, "central", f"node_{metric}_max") == table.max()).all()
    # The average model is evaluated too (round 0: the runner's initial model).
    assert list(aggregate(run, "central", "accuracy").index) == [0, 1, 2, 3]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gossip_diagnostics_are_recorded(runs: dict[str, Run], strategy: str) -> None:
    run = runs[strategy]
    distance = aggregate(run, "train", "consensus_distance")
    assert list(distance.index) == [1, 2, 3] and (distance > 0).all()
    assert list(aggregate(run, "train", "variance_ratio").index) == [1, 2, 3]
    merged = aggregate(run, "train", "merged_nodes")
    # On a ring an up node merges when at least one of its two neighbours is up too.
    up = replied(run)
    for rnd in range(1, ROUNDS + 1):
        merging = sum(
            bool(up.loc[i, rnd] and (up.loc[(i - 1) % NODES, rnd] or up.loc[(i + 1) % NODES, rnd]))
            for i in range(NODES)
        )
        assert merged[rnd] == merging


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_down_nodes_keep_their_models(runs: dict[str, Run], strategy: str) -> None:
    run = runs[strategy]
    loss, up = per_node(run, "loss"), replied(run)
    down_events = 0
    for rnd in range(2, ROUNDS + 1):
        for node in range(NODES):
            if up.loc[node, rnd]:
                assert loss.loc[node, rnd] != loss.loc[node, rnd - 1]  # trained and merged
            else:
                down_events += 1
                assert loss.loc[node, rnd] == loss.loc[node, rnd - 1]  # exactly the same model
    assert down_events > 0  # with p = 0.8 and this seed some nodes are down
    assert not up.all().all()


def test_variance_correction_keeps_the_variance(runs: dict[str, Run]) -> None:
    # Same seed: the same nodes are up and train the same models in round 1; only the
    # merge differs. With this seed all eight are up in round 1, so every node averages
    # its K = 2 ring neighbours: from independent initialisations the two are
    # uncorrelated and their average keeps half the variance; the correction restores it.
    plain, corrected = runs["gossip"], runs["gossip-vc"]
    assert replied(plain).equals(replied(corrected)) and replied(plain)[1].all()
    loss = aggregate(plain, "train", "train_loss")[1]
    assert aggregate(corrected, "train", "train_loss")[1] == pytest.approx(loss)
    assert aggregate(plain, "train", "variance_ratio")[1] == pytest.approx(0.5, abs=0.05)
    assert aggregate(corrected, "train", "variance_ratio")[1] == pytest.approx(1.0, abs=0.03)
