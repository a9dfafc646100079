"""FedAvg fine-tuned on FedLAW's proxy set (scenarios/fedlaw/fedavg_proxy.py): one SGD step
by hand, and a run whose zero-epoch fine-tuning is FedAvg's exact model."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fedsim.analysis import load_run
from fedsim.arrays import Layout
from fedsim.config import load_scenario
from fedsim.plugins import load_object
from fedsim.simulation import run_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "fedlaw" / "reference.toml"
FedAvgProxy = load_object(
    "fedavg_proxy.py:FedAvgProxy",
    base_dir=SCENARIO.parent,
    source="test",
    key="strategy.name",
)
fedlaw_module = sys.modules[FedAvgProxy.__module__]


def test_one_sgd_step_on_a_linear_model_by_hand() -> None:
    # Linear(2 → 2) at zero, one example x = [1, 0] of class 0: logits 0, softmax [½, ½],
    # ∂CE/∂logits = [-½, ½]; ∂W = outer([-½, ½], x), ∂b = [-½, ½]; lr 0.1 → W = [[.05, 0],
    # [-.05, 0]], b = [.05, -.05].
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    from flwr.app import Array, ArrayRecord

    record = ArrayRecord({k: Array(v.numpy()) for k, v in state.items()})
    layout = Layout.of(record)
    split = fedlaw_module.ModelSplit.of(layout, model)
    proxy = (torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    new = fedlaw_module.fine_tune(
        model,
        split,
        torch.zeros(6),
        {},
        proxy,
        epochs=1,
        lr=0.1,
        batch_size=128,
        generator=torch.Generator().manual_seed(0),
    )
    by_name = dict(zip(layout.names, torch.split(new, list(layout.sizes)), strict=True))
    assert torch.allclose(by_name["weight"], torch.tensor([0.05, 0.0, -0.05, 0.0]))
    assert torch.allclose(by_name["bias"], torch.tensor([0.05, -0.05]))


def test_zero_epochs_is_fedavg_on_the_same_clients(tmp_path: Path) -> None:
    losses = []
    for strategy in ('{name="fedavg"}', '{name="fedavg_proxy.py:FedAvgProxy",server_epochs=0}'):
        scenario = load_scenario(
            SCENARIO,
            [
                'data.dataset="digits"',
                "rounds=3",
                "evaluate.every=0",
                f"strategy={strategy}",
            ],
        )
        out = tmp_path / str(len(losses))
        run_scenario(scenario, out)
        train = load_run(out).metrics.query("phase == 'train' and metric == 'train_loss'")
        losses.append(train.groupby("round")["value"].mean().to_numpy())
    assert len(losses[0]) == 3
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]))
