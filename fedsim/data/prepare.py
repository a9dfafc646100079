"""A scenario's data, made ready once per run: loaded, the server's proxy set carved
out, partitioned across clients, each client's local test split set aside, and written
to the memory-mapped store (:mod:`fedsim.data.store`) the clients read."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedsim.config import Scenario
from fedsim.data.datasets import Dataset, load_dataset
from fedsim.data.partition import class_balanced_indices, partition_indices, split_each
from fedsim.data.store import ClientDataStore
from fedsim.errors import ScenarioError
from fedsim.seeding import rng

ProxySet = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ProxyRequest:
    """A server-held proxy set a strategy asked for (``proxy_data``)."""

    per_class: int
    source: str  # "test": carved from the test split; "train": from the training data


PROXY_SOURCES = ("test", "train")


def carve_proxy(dataset: Dataset, request: ProxyRequest, seed: int) -> tuple[Dataset, ProxySet]:
    """Remove a class-balanced proxy set from the test or training split.

    The run never evaluates (or trains clients) on the samples the server learns from.
    """
    generator = rng(seed, "proxy-set")
    if request.source == "test":
        chosen = class_balanced_indices(dataset.y_test, request.per_class, generator)
        keep = np.setdiff1d(np.arange(len(dataset.y_test)), chosen)
        proxy = (dataset.x_test[chosen], dataset.y_test[chosen])
        return replace(dataset, x_test=dataset.x_test[keep], y_test=dataset.y_test[keep]), proxy
    if dataset.natural_partition is not None:
        raise ValueError("proxy_source = 'train' needs a dataset without its own clients")
    chosen = class_balanced_indices(dataset.y_train, request.per_class, generator)
    keep = np.setdiff1d(np.arange(len(dataset.y_train)), chosen)
    proxy = (dataset.x_train[chosen], dataset.y_train[chosen])
    return replace(dataset, x_train=dataset.x_train[keep], y_train=dataset.y_train[keep]), proxy


def partition_data(
    scenario: Scenario, proxy: ProxyRequest | None = None
) -> tuple[Dataset, list[np.ndarray], list[np.ndarray], ProxySet | None]:
    """Load and partition the scenario's data in memory, writing nothing.

    Returns the data set (proxy set removed), each client's training and local test
    indices into it, and the proxy set (None unless ``proxy`` asks for one).
    """
    data = scenario.data
    assert data.dataset is not None
    dataset = load_dataset(
        data.dataset,
        data.options,
        seed=scenario.seed,
        num_clients=data.num_clients,
        test_fraction=data.test_fraction,
        source=scenario.source,
        base_dir=scenario.base_dir,
    )
    proxy_data = None
    if proxy is not None:
        try:
            dataset, proxy_data = carve_proxy(dataset, proxy, scenario.seed)
        except ValueError as error:
            raise ScenarioError(scenario.source, "strategy.proxy_source", str(error)) from error
    if data.partition == "natural" and dataset.natural_partition is None:
        raise ScenarioError(
            scenario.source, "data.partition", f"not natural: {data.dataset} has no own clients"
        )
    try:
        parts = partition_indices(
            dataset.y_train,
            data.num_clients,
            data.partition,
            rng=rng(scenario.seed, "partition"),
            alpha=data.alpha,
            dirichlet_method=data.dirichlet_method,
            shards_per_client=data.shards_per_client,
            natural=dataset.natural_partition,
        )
    except ValueError as error:
        raise ScenarioError(
            scenario.source, "data.partition", f"a feasible partition ({error})"
        ) from error
    train_parts, test_parts = split_each(
        parts, data.client_test_fraction, rng(scenario.seed, "client-test-split")
    )
    return dataset, train_parts, test_parts, proxy_data


def prepare_data(
    scenario: Scenario, directory: Path, proxy: ProxyRequest | None = None
) -> tuple[ClientDataStore, ProxySet | None]:
    """Load, partition and store the scenario's data once (memory-mapped afterwards)."""
    dataset, train_parts, test_parts, proxy_data = partition_data(scenario, proxy)
    return ClientDataStore.write(directory, dataset, train_parts, test_parts), proxy_data


def label_mix(store: ClientDataStore) -> np.ndarray:
    """Each client's training label distribution (N × C, rows sum to 1; 0 for no data)."""
    counts = store.label_counts().astype(float)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
