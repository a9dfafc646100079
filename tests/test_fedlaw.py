"""FedLAW: w(θ) = γ Σ λ_i w_i pinned on hand-computed numbers, and the server optimisation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from torch import nn
from torch.func import functional_call

from fedsim.arrays import Layout
from fedsim.seeding import torch_generator
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategies.fedlaw import (
    FedLAW,
    ModelSplit,
    ServerSettings,
    aggregate,
    class_balanced_indices,
    coefficients,
    fit_theta,
    initial_theta,
    size_weights,
)
from tests.helpers import FixedGrid, reply_from

NODES = [11, 12, 13]
EXAMPLES = [10.0, 30.0, 60.0]


def mlp(seed: int, dropout: float = 0.0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 3))


class BNNet(nn.Module):
    """Linear → BatchNorm → ReLU → Linear; state_dict keys lin.*, bn.*, head.*."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.lin = nn.Linear(3, 4)
            self.bn = nn.BatchNorm1d(4)
            self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.lin(x))))

    def set_statistics(self, mean: list[float], var: list[float], count: int) -> None:
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.tensor(mean))  # type: ignore[union-attr]
            self.bn.running_var.copy_(torch.tensor(var))  # type: ignore[union-attr]
            self.bn.num_batches_tracked.fill_(count)  # type: ignore[union-attr]


def teacher_proxy(teacher: nn.Module, n: int = 64, inputs: int = 4) -> tuple[np.ndarray, ...]:
    """Inputs and the labels ``teacher`` gives them: a proxy set some w(θ) fits well."""
    x = torch.randn(n, inputs, generator=torch_generator(3, "test-proxy"))
    with torch.no_grad():
        y = teacher.eval()(x).argmax(dim=1)
    return x.numpy(), y.numpy().astype(np.int64)


def record(model: nn.Module) -> ArrayRecord:
    return ArrayRecord({k: v.detach().clone() for k, v in model.state_dict().items()})


def run_round(
    strategy: FedLAW | FedAvg, global_model: nn.Module, clients: list[Any], rnd: int = 1
) -> tuple[ArrayRecord, dict[str, Any]]:
    grid: Any = FixedGrid(NODES)
    messages = list(strategy.configure_train(rnd, record(global_model), ConfigRecord(), grid))
    assert [m.metadata.dst_node_id for m in messages] == NODES
    replies = [
        reply_from(m, record(client), EXAMPLES[i])
        for i, (m, client) in enumerate(zip(messages, clients, strict=True))
    ]
    arrays, metrics = strategy.aggregate_train(rnd, replies)
    assert arrays is not None
    return arrays, dict(metrics.items()) if metrics is not None else {}


def fedlaw(factory: Callable[[], nn.Module], proxy: tuple[np.ndarray, ...], **kw: Any) -> FedLAW:
    return FedLAW(model_factory=factory, proxy_data=(proxy[0], proxy[1]), **kw)


# --- the parameterisation, by hand ---------------------------------------------


def test_initial_theta_is_fedavg_for_softmax_and_uniform_for_quad() -> None:
    p = torch.tensor([0.1, 0.3, 0.6])
    gamma, lam = coefficients(initial_theta(p))
    assert float(gamma) == 1.0
    assert lam.tolist() == pytest.approx([0.1, 0.3, 0.6], abs=1e-7)
    # The reference's quad starts from θ_i = √(1/K), θ_K = 1: λ uniform, γ = 1.
    gamma, lam = coefficients(initial_theta(p, "quad"), "quad")
    assert float(gamma) == 1.0
    assert lam.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3], abs=1e-7)


def test_aggregate_is_gamma_times_lambda_weighted_sum() -> None:
    clients = torch.tensor([[4.0, 0.0, 1.0], [0.0, 8.0, 1.0]])
    # softmax: θ = [0, ln 3, ln 2] → λ = [1/4, 3/4], γ = 2 → 2·([1, 0, .25] + [0, 6, .75])
    theta = torch.tensor([0.0, math.log(3.0), math.log(2.0)])
    assert aggregate(theta, clients).tolist() == pytest.approx([2.0, 12.0, 2.0], rel=1e-6)
    # quad: θ = [1, 2, 3] → λ = [1/5, 4/5], γ = 9 → 9·([0.8, 0, 0.2] + [0, 6.4, 0.8])
    theta = torch.tensor([1.0, 2.0, 3.0])
    assert aggregate(theta, clients, "quad").tolist() == pytest.approx([7.2, 57.6, 9.0], rel=1e-6)


def test_size_weights_and_their_validation() -> None:
    assert size_weights(np.array([10.0, 30.0, 60.0])).tolist() == pytest.approx([0.1, 0.3, 0.6])
    with pytest.raises(ValueError, match="example counts"):
        size_weights(np.array([0.0, 0.0]))


# --- the server optimisation ----------------------------------------------------


@pytest.mark.parametrize("parameterisation", ["softmax", "quad"])
def test_theta_moves_and_the_proxy_loss_falls(parameterisation: str) -> None:
    teacher, other = mlp(1), mlp(2)
    x, y = (torch.from_numpy(a) for a in teacher_proxy(teacher))
    layout = Layout.of(record(teacher))
    split = ModelSplit.of(layout, mlp(0))
    clients = layout.stack([record(teacher), record(other)])
    frozen = clients.clone()
    theta0 = initial_theta(torch.tensor([0.3, 0.7]), parameterisation)

    def proxy_loss(theta: torch.Tensor) -> float:
        weights = split.parameters(aggregate(theta, clients, parameterisation))
        return float(nn.functional.cross_entropy(functional_call(mlp(0), weights, (x,)), y))

    settings = ServerSettings(server_epochs=1, batch_size=8, parameterisation=parameterisation)
    fit = fit_theta(mlp(0), split, clients, theta0, {}, (x, y), settings, torch_generator(0, "t"))

    assert not torch.equal(fit.theta, theta0)
    assert proxy_loss(fit.theta) < proxy_loss(theta0) - 1e-3
    # the teacher's weight grew; the clients' weights were constants
    assert (
        coefficients(fit.theta, parameterisation)[1][0]
        > coefficients(theta0, parameterisation)[1][0]
    )
    assert torch.equal(clients, frozen) and not clients.requires_grad
    assert len(fit.epoch_losses) == 1 and math.isfinite(fit.epoch_losses[0])


def test_server_epochs_zero_is_fedavg(flower_identity: None) -> None:
    teacher = mlp(1)
    clients = [teacher, mlp(2), mlp(3)]
    expected, _ = run_round(FedAvg(), mlp(0), clients)
    arrays, metrics = run_round(
        fedlaw(lambda: mlp(0), teacher_proxy(teacher), server_epochs=0), mlp(0), clients
    )
    assert list(arrays.keys()) == list(expected.keys())
    for name in expected:
        np.testing.assert_allclose(
            arrays[name].numpy(), expected[name].numpy(), rtol=1e-6, atol=1e-7
        )
    assert metrics["gamma"] == 1.0


def test_quad_with_server_epochs_zero_is_the_plain_mean(flower_identity: None) -> None:
    clients = [mlp(1), mlp(2), mlp(3)]
    arrays, _ = run_round(
        fedlaw(lambda: mlp(0), teacher_proxy(mlp(1)), server_epochs=0, parameterisation="quad"),
        mlp(0),
        clients,
    )
    for name in clients[0].state_dict():
        mean = sum(c.state_dict()[name] for c in clients) / 3
        np.testing.assert_allclose(arrays[name].numpy(), mean.numpy(), rtol=1e-5, atol=1e-6)


def test_full_flower_round_on_a_tiny_mlp(flower_identity: None) -> None:
    teacher = mlp(1)
    clients = [mlp(2), teacher, mlp(3)]
    strategy = fedlaw(lambda: mlp(0), teacher_proxy(teacher), server_epochs=5, batch_size=16)
    arrays, metrics = run_round(strategy, mlp(0), clients)

    assert set(metrics) == {"gamma", "server_loss"}
    assert set(strategy.client_metrics) == set(NODES)
    lam = np.array([strategy.client_metrics[n]["lambda"] for n in NODES])
    assert lam.sum() == pytest.approx(1.0, abs=1e-6)
    assert not np.allclose(lam, [0.1, 0.3, 0.6], atol=1e-4)  # θ moved away from p
    assert lam[1] > 0.3  # the teacher gained weight
    # the new global model is γ Σ λ_i w_i with the recorded γ and λ
    for name in arrays:
        expected = metrics["gamma"] * sum(
            float(w) * c.state_dict()[name].numpy() for w, c in zip(lam, clients, strict=True)
        )
        np.testing.assert_allclose(arrays[name].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_same_seed_same_result_and_global_rng_untouched(flower_identity: None) -> None:
    teacher = mlp(1, dropout=0.5)
    clients = [teacher, mlp(2, 0.5), mlp(3, 0.5)]
    proxy = teacher_proxy(teacher)

    def run(seed: int, global_seed: int) -> tuple[ArrayRecord, dict[str, Any]]:
        strategy = fedlaw(lambda: mlp(0, 0.5), proxy, server_epochs=3, batch_size=16, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(global_seed)  # whatever the global stream, dropout is seeded
            state = torch.get_rng_state()
            result = run_round(strategy, mlp(0, 0.5), clients)
            assert torch.equal(torch.get_rng_state(), state)
        return result

    (first, metrics_first), (second, metrics_second) = run(4, 0), run(4, 1)
    other, metrics_other = run(5, 0)
    assert metrics_first == metrics_second and metrics_first["gamma"] != metrics_other["gamma"]
    for name in first:
        assert np.array_equal(first[name].numpy(), second[name].numpy())
    assert not all(np.array_equal(first[n].numpy(), other[n].numpy()) for n in first)


# --- buffers --------------------------------------------------------------------


BN_PROXY = (
    torch.randn(20, 3, generator=torch_generator(9, "test-bn")).numpy(),
    np.arange(20, dtype=np.int64) % 2,
)


def bn_round(server_epochs: int, batch_size: int = 128) -> tuple[ArrayRecord, BNNet, list[BNNet]]:
    global_model, clients = BNNet(0), [BNNet(1), BNNet(2), BNNet(3)]
    global_model.set_statistics([1.0, 2.0, 3.0, 4.0], [2.0] * 4, 7)
    for client in clients:  # clients' statistics, which FedLAW must ignore
        client.set_statistics([100.0] * 4, [50.0] * 4, 1000)
    strategy = FedLAW(
        model_factory=lambda: BNNet(0),
        proxy_data=BN_PROXY,
        server_epochs=server_epochs,
        batch_size=batch_size,
    )
    arrays, _ = run_round(strategy, global_model, clients)
    return arrays, global_model, clients


def size_weighted(clients: list[BNNet], name: str) -> np.ndarray:
    p = np.array(EXAMPLES) / sum(EXAMPLES)
    return np.sum([w * c.state_dict()[name].numpy() for w, c in zip(p, clients, strict=True)], 0)


def test_buffers_are_the_global_ones_updated_by_the_server_passes(flower_identity: None) -> None:
    arrays, _, clients = bn_round(server_epochs=1)
    # One batch (20 < 128), forwarded at θ0, i.e. at the FedAvg parameters.
    x = BN_PROXY[0]
    hidden = x @ size_weighted(clients, "lin.weight").T + size_weighted(clients, "lin.bias")
    np.testing.assert_allclose(
        arrays["bn.running_mean"].numpy(),
        0.9 * np.array([1.0, 2.0, 3.0, 4.0]) + 0.1 * hidden.mean(axis=0),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        arrays["bn.running_var"].numpy(), 0.9 * 2.0 + 0.1 * hidden.var(axis=0, ddof=1), rtol=1e-5
    )
    assert arrays["bn.num_batches_tracked"].numpy().item() == 8
    # the BatchNorm affine parameters are aggregated like every other parameter (θ moved once)
    assert not np.allclose(arrays["bn.weight"].numpy(), size_weighted(clients, "bn.weight"))


def test_buffers_unchanged_without_server_epochs(flower_identity: None) -> None:
    arrays, global_model, clients = bn_round(server_epochs=0)
    for name, tensor in global_model.state_dict().items():
        got = arrays[name].numpy().reshape(tensor.shape)
        if name.startswith("bn.running") or name == "bn.num_batches_tracked":
            assert np.array_equal(got, tensor.numpy())
        else:
            np.testing.assert_allclose(got, size_weighted(clients, name), rtol=1e-5, atol=1e-6)


def test_every_server_batch_steps_the_statistics(flower_identity: None) -> None:
    arrays, _, _ = bn_round(server_epochs=3, batch_size=8)
    assert arrays["bn.num_batches_tracked"].numpy().item() == 7 + 3 * 3  # 3 epochs × ⌈20/8⌉


# --- validation and the proxy-set helper ------------------------------------------


def test_options_are_validated() -> None:
    proxy = (np.zeros((2, 4), np.float32), np.array([0, 1]))

    def factory() -> nn.Module:
        return mlp(0)

    with pytest.raises(ValueError, match="parameterisation"):
        FedLAW(model_factory=factory, proxy_data=proxy, parameterisation="exp")
    with pytest.raises(ValueError, match="betas"):
        FedLAW(model_factory=factory, proxy_data=proxy, betas=[0.5])
    with pytest.raises(ValueError, match="server_epochs"):
        FedLAW(model_factory=factory, proxy_data=proxy, server_epochs=-1)
    with pytest.raises(ValueError, match="batch_size"):
        FedLAW(model_factory=factory, proxy_data=proxy, batch_size=0)
    with pytest.raises(ValueError, match="server_lr"):
        FedLAW(model_factory=factory, proxy_data=proxy, server_lr=0.0)
    with pytest.raises(ValueError, match="model_factory"):
        FedLAW(proxy_data=proxy)
    with pytest.raises(ValueError, match="proxy_data"):
        FedLAW(model_factory=factory)
    with pytest.raises(ValueError, match="labels"):
        FedLAW(model_factory=factory, proxy_data=(np.zeros((2, 4)), np.array([0.5, 1.0])))
    FedLAW(model_factory=factory, proxy_data=proxy, betas=[0.9, 0.99])


def test_a_model_that_differs_from_the_run_is_refused(flower_identity: None) -> None:
    proxy = teacher_proxy(mlp(1))
    strategy = fedlaw(lambda: nn.Linear(4, 3), proxy, server_epochs=0)
    with pytest.raises(ValueError, match="model_factory's model"):
        run_round(strategy, mlp(0), [mlp(1), mlp(2), mlp(3)])


def test_class_balanced_indices() -> None:
    labels = np.array([2, 0, 1, 2, 0, 2, 0, 2])
    chosen = class_balanced_indices(labels, 2, np.random.default_rng(0))
    assert np.all(np.diff(chosen) > 0)
    assert np.bincount(labels[chosen]).tolist() == [2, 1, 2]  # class 1 has one example only
    again = class_balanced_indices(labels, 2, np.random.default_rng(0))
    assert np.array_equal(chosen, again)
    assert len(class_balanced_indices(labels, 10, np.random.default_rng(1))) == len(labels)
