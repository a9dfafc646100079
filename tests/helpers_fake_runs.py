"""Runs and sweeps written by formula, for the report, the sweeps and the notebooks.

The runs are written through :class:`fedsim.results.RunWriter` from a formula
(:func:`accuracy_of`), with the diagnostics of their strategy, so that every entry of
a report's summary table can be worked out by hand; no model is trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from fedsim.config import Scenario
from fedsim.results import ClientFacts, RoundLog, RunWriter
from fedsim.simulation.sweep import plan_sweep, run_sweep

RATES = [0.5, 0.25, 1.0, 0.2]
BASE: dict[str, Any] = {
    "name": "fake",
    "seed": 1,
    "rounds": 3,
    "data": {"dataset": "digits", "num_clients": 4, "partition": "iid"},
    "model": {"name": "mlp", "hidden": [16]},
    "client": {"local_steps": 2, "batch_size": 16, "lr": 0.1},
    "participation": {"pattern": "bernoulli", "rates": RATES},
    "strategy": {"name": "fedavg"},
    "engine": {"num_actors": 1},
}
STRATEGY_BASE = {"fedavg": 0.5, "fedau": 0.6, "fedlaw": 0.55, "gossip": 0.4, "gossip-vc": 0.45}
PATTERN_BONUS = {"bernoulli": 0.0, "markov": 0.02, "cyclic": 0.04}


def accuracy_of(strategy: str, pattern: str, seed: int, rnd: int) -> float:
    """The fake runs' test accuracy: cyclic runs drop at round 3, so their best is round 2."""
    dip = 0.15 if pattern == "cyclic" and rnd == 3 else 0.0
    return STRATEGY_BASE[strategy] + 0.1 * rnd + PATTERN_BONUS[pattern] + 0.01 * seed - dip


def available_clients(rnd: int, seed: int) -> list[int]:
    return [c for c in range(4) if (c + rnd + seed) % 3 != 0]


def write_fake_run(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A complete run directory whose metrics follow :func:`accuracy_of`, plus the
    diagnostics of its strategy (FedAU ω, FedLAW γ and λ, gossip consensus distance)."""
    strategy, pattern = raw["strategy"]["name"], raw["participation"]["pattern"]
    seed, rounds = raw["seed"], raw["rounds"]
    writer = RunWriter(run_dir, raw)
    rates = np.array(raw["participation"]["rates"], dtype=float)
    writer.client_facts(ClientFacts(len(rates), None, None, None, rates))
    for rnd in range(rounds + 1):
        accuracy = accuracy_of(strategy, pattern, seed, rnd)
        writer.metrics(rnd, None, "central", [("accuracy", accuracy), ("loss", 2.5 - accuracy)])
        if rnd == 0:
            continue
        available = available_clients(rnd, seed)
        replied = available[:-1]  # the last reachable client is selected but never replies
        log = RoundLog(np.array(available), selected=set(available), replied=set(replied))
        writer.participation(rnd, log)
        for client in replied:
            writer.metrics(rnd, client, "train", [("num-examples", 10.0 * (client + 1))])
            if strategy == "fedau":
                writer.metric(rnd, client, "server", "omega", 1.0 + client + 0.1 * rnd)
            if strategy == "fedlaw":
                share = (client + 1) / sum(c + 1 for c in replied)
                writer.metric(rnd, client, "server", "lambda", share)
        if strategy == "fedlaw":
            writer.metric(rnd, None, "train", "gamma", 1.0 - 0.01 * rnd - 0.001 * seed)
        if strategy.startswith("gossip"):
            writer.metric(rnd, None, "train", "consensus_distance", 2.0 / rnd + 0.1 * seed)
            for suffix, shift in (("mean", -0.05), ("min", -0.1), ("max", 0.0)):
                writer.metric(rnd, None, "central", f"node_accuracy_{suffix}", accuracy + shift)
    summary = {"rounds": rounds, "final_accuracy": accuracy_of(strategy, pattern, seed, rounds)}
    writer.finish(summary)
    return summary


def fake_run_scenario(
    scenario: Scenario, run_dir: Path, *, on_round_end: Any = None
) -> tuple[Path, dict[str, Any]]:
    """Stands in for fedsim.simulation.run_scenario: writes a fake run, no training."""
    summary = write_fake_run(scenario.raw, run_dir)
    return run_dir, summary


def write_fake_sweep(
    directory: Path, grid: list[str], seeds: str, base: dict[str, Any] | None = None
) -> Path:
    """A sweep of ``grid`` × ``seeds`` whose runs are written by formula (no training)."""
    directory.mkdir(parents=True, exist_ok=True)
    scenario_file = directory / "scenario.in.toml"
    scenario_file.write_text(tomli_w.dumps(base or BASE))
    plan = plan_sweep(scenario_file, grid=grid, seeds=seeds, out=directory / "sweep")
    outcome = run_sweep(plan, run=fake_run_scenario)
    assert len(outcome.ran) == len(plan.points)
    return plan.directory
