"""FedLAW through the whole run path: scenario → proxy carving → Ray actors → metrics files.

The strategy's arithmetic is pinned in tests/test_fedlaw.py; here we check what only a real
run shows: ``[strategy] name = "fedlaw"`` builds with its injected model and proxy set, γ and
every λ_i reach metrics.parquet each round, and the server's proxy examples are never in the
central test set (``proxy_source = "test"``) or in any client's data (``"train"``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from fedsim.analysis import load_run
from fedsim.config import load_scenario
from fedsim.data.datasets import load_dataset
from fedsim.data.store import ClientDataStore
from fedsim.results import CLIENT_DATA_DIR
from fedsim.simulation import build_run, run_scenario

ROUNDS = 2
CLIENTS = 6
PER_CLASS = 5
DIGITS_CLASSES = 10


def fedlaw_scenario(tmp_path: Path, proxy_source: str | None) -> Path:
    strategy: dict = {"name": "fedlaw", "server_epochs": 2, "proxy_per_class": PER_CLASS}
    if proxy_source is not None:
        strategy["proxy_source"] = proxy_source
    scenario = {
        "name": "fedlaw-e2e",
        "seed": 5,
        "rounds": ROUNDS,
        "data": {"dataset": "digits", "num_clients": CLIENTS, "partition": "iid"},
        "model": {"name": "mlp", "hidden": [32]},
        "client": {"local_steps": 5, "batch_size": 16, "lr": 0.1},
        "participation": {"pattern": "always"},
        "strategy": strategy,
        "engine": {"num_actors": 2},
    }
    path = tmp_path / "fedlaw.toml"
    path.write_text(tomli_w.dumps(scenario))
    return path


def rows(x: np.ndarray, y: np.ndarray) -> Counter[bytes]:
    """The multiset of (input, label) rows: digits has duplicate images, so no set logic."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(len(y), -1)
    pairs = zip(flat, y, strict=True)
    return Counter(row.tobytes() + int(label).to_bytes(2, "little") for row, label in pairs)


def held_out_rows(scenario_path: Path, tmp_path: Path) -> dict[str, Counter[bytes]]:
    """Rows of the full digits splits, of the proxy set build_run() carves, and of the store."""
    scenario = load_scenario(scenario_path)
    full = load_dataset(
        "digits", {}, seed=5, num_clients=CLIENTS, test_fraction=0.2, source="", base_dir=tmp_path
    )
    prepared = build_run(scenario, tmp_path / "prepared")
    proxy = prepared.proxy_data
    assert proxy is not None and prepared.store is not None
    assert np.bincount(proxy[1], minlength=DIGITS_CLASSES).tolist() == [PER_CLASS] * DIGITS_CLASSES
    store = ClientDataStore.open(prepared.store.directory)
    train = [store.train(client) for client in range(CLIENTS)]
    return {
        "full_test": rows(full.x_test, full.y_test),
        "full_train": rows(full.x_train, full.y_train),
        "proxy": rows(*proxy),
        "central": rows(*store.central_test()),
        "train": rows(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
    }


def test_fedlaw_run_records_gamma_and_lambda_every_round(tmp_path: Path, ray_session: None) -> None:
    path = fedlaw_scenario(tmp_path, proxy_source=None)
    run_dir, summary = run_scenario(load_scenario(path), tmp_path / "run")
    metrics = load_run(run_dir).metrics

    gamma = metrics[(metrics.metric == "gamma")]
    assert set(gamma.phase) == {"train"} and gamma.client.isna().all()
    assert sorted(gamma["round"]) == list(range(1, ROUNDS + 1))
    assert (gamma.value > 0).all() and (gamma.value != 1.0).all()  # θ moved: gradients reached γ

    lam = metrics[metrics.metric == "lambda"]
    assert set(lam.phase) == {"server"}
    assert sorted(lam["round"].unique()) == list(range(1, ROUNDS + 1))
    for _, one_round in lam.groupby("round"):
        assert sorted(one_round.client) == list(range(CLIENTS))
        assert one_round.value.sum() == pytest.approx(1.0, abs=1e-5)
    assert summary["final_accuracy"] > 0.1  # evaluated, on ten classes

    # The run's central test set is the test split less the proxy set the server learns on.
    store = ClientDataStore.open(run_dir / CLIENT_DATA_DIR)
    expected = held_out_rows(path, tmp_path)
    run_central = rows(*store.central_test())
    assert run_central == expected["central"]
    assert run_central + expected["proxy"] == expected["full_test"]
    assert run_central.total() == expected["full_test"].total() - DIGITS_CLASSES * PER_CLASS
    assert expected["train"] == expected["full_train"]


def test_proxy_from_train_leaves_the_test_split_whole(tmp_path: Path) -> None:
    split = held_out_rows(fedlaw_scenario(tmp_path, proxy_source="train"), tmp_path)
    assert split["central"] == split["full_test"]
    assert split["train"] + split["proxy"] == split["full_train"]
    assert split["train"].total() == split["full_train"].total() - DIGITS_CLASSES * PER_CLASS
