"""The floor: the scenario's training as a plain sequential PyTorch loop, no Flower, no Ray.

It does exactly what fedsim's ClientApp and FedAvg do, through the same functions: the
same model (``prepared.model_factory``), the same memory-mapped client store, the same
reachable clients (``prepared.pattern``), the same minibatch stream
(:func:`fedsim.client.training.round_batches`), the same SGD
(:func:`fedsim.client.training.local_sgd`)
and the same aggregation (:func:`fedsim.strategies.fedavg.fedavg_weights`,
:func:`~fedsim.strategies.fedavg.weighted_server_update`). What it leaves out is what a
simulator adds: messages, serialisation, actors, result files. Its final model therefore
equals fedsim's (the benchmark checks this), and its time is what fedsim is measured against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from fedsim.client.device import resolve_device
from fedsim.client.training import local_sgd, round_batches
from fedsim.simulation import RunSetup
from fedsim.strategies.fedavg import fedavg_weights, weighted_server_update


@dataclass
class PlainTimes:
    """Seconds per phase of each round (``load``: the global model into the model)."""

    rounds: list[dict[str, float]] = field(default_factory=list)


def flatten(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """A state dict as one float32 vector, in state-dict order (as :class:`fedsim.arrays.Layout`).

    >>> flatten({"a": torch.ones(2, 2), "b": torch.zeros(1)}).tolist()
    [1.0, 1.0, 1.0, 1.0, 0.0]
    """
    return torch.cat([t.detach().reshape(-1).to(torch.float32) for t in state.values()])


@torch.no_grad()
def assign(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's own tensors (what ``load_state_dict`` does, minus checks)."""
    for tensor, value in zip(model.state_dict().values(), state.values(), strict=True):
        tensor.copy_(value)


def unflatten(vector: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`flatten`, shapes and dtypes taken from ``like``."""
    out, offset = {}, 0
    for name, tensor in like.items():
        size = tensor.numel()
        chunk = vector[offset : offset + size].reshape(tensor.shape)
        if not tensor.is_floating_point():
            chunk = torch.round(chunk)
        out[name] = chunk.to(tensor.dtype)
        offset += size
    return out


def run_plain(
    prepared: RunSetup,
    *,
    on_round_end: Callable[[int], None] | None = None,
    sync: Callable[[], None] | None = None,
) -> tuple[dict[str, torch.Tensor], PlainTimes]:
    """Run every round of ``prepared``'s scenario; returns the final state and timings.

    Supports fedsim's FedAvg with its defaults (all reachable clients train, weights by
    example count, server learning rate 1) and fedsim's own ClientApp.
    """
    scenario = prepared.scenario
    assert prepared.model_factory is not None and prepared.store is not None
    client = scenario.client
    device = resolve_device(client.device)
    server_device = resolve_device(scenario.engine.server_device)
    model = prepared.model_factory().to(device)
    store = prepared.store
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    streams: dict[int, tuple[int, int]] = {}
    times = PlainTimes()
    wait = sync or (lambda: None)
    for rnd in range(1, scenario.rounds + 1):
        started = time.perf_counter()
        phases = dict.fromkeys(("load", "train", "pack"), 0.0)
        clients = prepared.pattern.reachable(rnd)
        rows, counts = [], []
        for c in clients.tolist():
            t0 = time.perf_counter()
            assign(model, state)
            t1 = time.perf_counter()
            x, y = store.train(c)
            epoch, position = streams.get(c, (0, 0))
            batches, epoch, position = round_batches(
                c,
                len(y),
                epoch,
                position,
                local_steps=client.local_steps,
                local_epochs=client.local_epochs,
                batch_size=client.batch_size,
                seed=scenario.seed,
            )
            streams[c] = (epoch, position)
            local_sgd(
                model,
                x,
                y,
                batches,
                lr=client.lr,
                momentum=client.momentum,
                weight_decay=client.weight_decay,
                device=device,
            )
            t2 = time.perf_counter()
            rows.append(flatten(model.state_dict()).to(server_device))
            counts.append(len(y))
            phases["load"] += t1 - t0
            phases["train"] += t2 - t1
            phases["pack"] += time.perf_counter() - t2
        t3 = time.perf_counter()
        if rows:
            weights = fedavg_weights("participating", np.asarray(counts, dtype=float))
            new = weighted_server_update(
                flatten(state).to(server_device), torch.stack(rows), weights, 1.0
            )
            state = unflatten(new.to(device), state)
        wait()
        finished = time.perf_counter()
        phases["aggregate"] = finished - t3
        phases["round"] = finished - started
        times.rounds.append(phases)
        if on_round_end is not None:
            on_round_end(rnd)
    return state, times
