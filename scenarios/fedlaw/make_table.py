"""Run FedAvg vs FedLAW on the two FedLAW scenarios over seeds and write docs/fedlaw-results.md.

FedLAW (Li et al., ICML 2023, https://arxiv.org/abs/2302.10911) claims that the learned
global shrinking factor γ ends below 1 and that FedLAW generalises better than FedAvg; its
reference code reportedly fails with 100 clients and 10% participation. This script checks
both on reference_scaled.toml and hard_100_clients.toml.

Every (scenario, strategy, seed) point is an ordinary ``fedsim sweep`` run: the grid is run
in ONE process on one Ray runtime through :mod:`fedsim.sweep`, into the same directories as

    fedsim sweep scenarios/fedlaw/SCENARIO.toml --grid strategy.name=fedavg,fedlaw \\
        --seeds 1,2,3 --out runs/fedlaw/SCENARIO

and a complete run (one with summary.json) is never redone, so an interrupted table resumes.

FedLAW evaluates on the test split minus its proxy set (10 examples per class), FedAvg on
the whole split. The table therefore also gives every run's final model's accuracy on the
*common* test set, FedLAW's (the same for both strategies at a given seed: the proxy set
depends only on the seed, and taking it out of the test split leaves the clients' data as
FedAvg has it).

Usage (from the repository root)::

    .venv/bin/python scenarios/fedlaw/make_table.py               # run what is missing, write
    .venv/bin/python scenarios/fedlaw/make_table.py --table-only  # only rewrite the markdown
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedsim.analysis import load_run
from fedsim.client.training import evaluate_arrays
from fedsim.data.store import ClientDataStore
from fedsim.models import build_model
from fedsim.run.setup import DATA_DIR
from fedsim.sweep import SweepPlan, plan_sweep, run_sweep

HERE = Path(__file__).resolve().parent
SCENARIOS = ("reference_scaled", "hard_100_clients")
STRATEGIES = ("fedavg", "fedlaw")
SEEDS = (1, 2, 3)
GRID = "strategy.name=" + ",".join(STRATEGIES)
CHECKPOINTS = (1, 5, 10, 20)  # rounds at which the γ trajectory is shown (plus the last)
TIMING_FILE = "grid_timing.json"  # under --runs: the wall time of the last invocation that ran


@dataclass(frozen=True)
class RunResult:
    """What the table needs from one run."""

    scenario: str
    strategy: str
    seed: int
    final: float
    best: float
    common_final: float
    gamma: pd.Series  # γ per round (FedLAW only; empty otherwise)
    wall_s: float


def plans(runs_root: Path, scenarios: Sequence[str], seeds: Sequence[int]) -> list[SweepPlan]:
    return [
        plan_sweep(HERE / f"{name}.toml", grid=[GRID], seeds=list(seeds), out=runs_root / name)
        for name in scenarios
    ]


def run_all(sweeps: Sequence[SweepPlan]) -> dict[str, object]:
    """Run every missing point on one Ray runtime; returns the wall time and runs it ran."""
    import ray

    logging.getLogger("flwr").setLevel(logging.WARNING)
    started = time.time()
    ran = 0
    ray.init(include_dashboard=False, logging_level=logging.ERROR)
    try:
        for plan in sweeps:
            outcome = run_sweep(plan, on_event=_print_event)
            if outcome.failed:
                raise SystemExit(f"{plan.directory}: failed runs {outcome.failed}")
            ran += len(outcome.ran)
    finally:
        ray.shutdown()
    finished = time.strftime("%Y-%m-%d %H:%M %Z")
    return {"wall_s": round(time.time() - started, 1), "runs": ran, "finished": finished}


def _print_event(event: object) -> None:
    kind = getattr(event, "kind", "")
    if kind in ("start", "done", "skip", "failed"):
        point = getattr(event, "point", None)
        print(f"{kind:6s} {getattr(point, 'name', '?')}", flush=True)


def final_model_accuracy(run_dir: Path, test_dir: Path) -> float:
    """Accuracy of ``run_dir``'s final model on the central test set stored in ``test_dir``."""
    config = load_run(run_dir).config
    store = ClientDataStore.open(test_dir / DATA_DIR)
    model = build_model(
        config["model"],
        input_shape=store.input_shape,
        num_classes=store.num_classes,
        seed=0,
        source=str(run_dir),
        base_dir=run_dir,
    )
    with np.load(run_dir / "final_model.npz") as final:
        model.load_state_dict({name: torch.from_numpy(final[name]) for name in final.files})
    x, y = store.central_test()
    _, accuracy = evaluate_arrays(model, x, y, device=torch.device("cpu"), batch_size=1024)
    return accuracy


def collect(plan: SweepPlan, scenario: str) -> list[RunResult]:
    """One RunResult per complete run of ``plan``."""
    dirs = {
        (point.settings["strategy.name"], point.settings["seed"]): plan.run_dir(point)
        for point in plan.points
    }
    results = []
    for (strategy, seed), run_dir in dirs.items():
        run = load_run(run_dir)
        if run.summary is None:
            continue
        accuracy = run.central("accuracy").drop(index=0, errors="ignore")
        metrics = run.metrics
        gamma = metrics[(metrics.metric == "gamma") & metrics.client.isna()]
        results.append(
            RunResult(
                scenario=scenario,
                strategy=strategy,
                seed=seed,
                final=float(accuracy.iloc[-1]),
                best=float(accuracy.max()),
                common_final=final_model_accuracy(run_dir, dirs[("fedlaw", seed)])
                if (dirs[("fedlaw", seed)] / "summary.json").is_file()
                else float("nan"),
                gamma=gamma.set_index("round")["value"].sort_index(),
                wall_s=float(run.summary["wall_time_s"]),
            )
        )
    return results


def cell(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± std`` over seeds (sample std, ddof 1)."""
    array = np.asarray(values, dtype=float)
    if len(array) == 0:
        return "—"
    if len(array) == 1:
        return f"{array[0]:.{digits}f}"
    return f"{array.mean():.{digits}f} ± {array.std(ddof=1):.{digits}f}"


def results_table(results: Sequence[RunResult]) -> str:
    header = (
        "| setup | strategy | seeds | final acc | best acc | final acc, common test set "
        "| γ at the end | wall time per run (s) |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        for strategy in STRATEGIES:
            group = [r for r in results if (r.scenario, r.strategy) == (scenario, strategy)]
            if not group:
                continue
            gammas = [float(r.gamma.iloc[-1]) for r in group if len(r.gamma)]
            lines.append(
                f"| {scenario} | {strategy} | {len(group)} | {cell([r.final for r in group])} "
                f"| {cell([r.best for r in group])} | {cell([r.common_final for r in group])} "
                f"| {cell(gammas) if gammas else '—'} | {cell([r.wall_s for r in group], 0)} |"
            )
    return "\n".join(lines)


def gamma_table(results: Sequence[RunResult]) -> str:
    """Mean ± std of γ over seeds at a few rounds, per setup."""
    lines: list[str] = []
    for scenario in SCENARIOS:
        group = [r for r in results if r.scenario == scenario and len(r.gamma)]
        if not group:
            continue
        last = int(min(r.gamma.index.max() for r in group))
        rounds = [t for t in CHECKPOINTS if t < last] + [last]
        if not lines:
            lines = ["| setup | " + " | ".join(f"round {t}" for t in rounds) + " | min over run |"]
            lines.append("|---|" + "---|" * (len(rounds) + 1))
        cells = [cell([float(r.gamma.get(t, np.nan)) for r in group]) for t in rounds]
        lowest = cell([float(r.gamma.min()) for r in group])
        lines.append(f"| {scenario} | " + " | ".join(cells) + f" | {lowest} |")
    return "\n".join(lines)


def findings(results: Sequence[RunResult]) -> str:
    """Per setup: FedLAW − FedAvg paired by seed on the common test set, and where γ ends."""
    lines = []
    for scenario in SCENARIOS:
        by = {(r.strategy, r.seed): r for r in results if r.scenario == scenario}
        seeds = sorted(seed for strategy, seed in by if strategy == "fedlaw")
        paired = [s for s in seeds if ("fedavg", s) in by]
        if not paired:
            continue
        gaps = [by["fedlaw", s].common_final - by["fedavg", s].common_final for s in paired]
        wins = sum(gap > 0 for gap in gaps)
        lines.append(
            f"- `{scenario}`: FedLAW − FedAvg, final accuracy on the common test set, paired by "
            f"seed: {cell(gaps)} (FedLAW higher at {wins} of {len(gaps)} seeds)."
        )
        gammas = [by["fedlaw", s].gamma for s in seeds]
        below = sum(float(g.iloc[-1]) < 1 for g in gammas)
        share = cell([float((g < 1).mean()) for g in gammas], 2)
        lines.append(
            f"- `{scenario}`: γ at the last round below 1 at {below} of {len(gammas)} seeds; "
            f"γ averaged over all rounds {cell([float(g.mean()) for g in gammas])}; "
            f"share of rounds with γ < 1: {share}."
        )
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores ({model})"


def setup_line(plan: SweepPlan) -> str:
    """``- `name`: N clients, who participates, R rounds;`` from the plan's scenario."""
    scenario = plan.points[0].scenario
    participation = dict(scenario.participation)
    who = (
        "all participating"
        if participation.get("pattern") == "always"
        else f"{participation.get('clients_per_round')} drawn uniformly per round"
    )
    name = Path(plan.scenario_file).stem
    return f"- `{name}`: {scenario.data.num_clients} clients, {who}, {scenario.rounds} rounds;"


def markdown(
    results: Sequence[RunResult],
    sweeps: Sequence[SweepPlan],
    seeds: Sequence[int],
    timing: dict[str, object] | None,
) -> str:
    import flwr

    setups = "\n".join(setup_line(plan) for plan in sweeps)

    total = sum(r.wall_s for r in results)
    grid = (
        f"the invocation that ran {timing['runs']} of them took {timing['wall_s']} s "
        f"(finished {timing['finished']}); "
        if timing
        else ""
    )
    return f"""# FedLAW vs FedAvg

FedLAW (Li et al., ICML 2023, <https://arxiv.org/abs/2302.10911>) against FedAvg on the two
scenarios in `scenarios/fedlaw/` (MNIST-1D, an MLP with two hidden layers of 128, FedLAW's
Dirichlet(0.5) "per-label" split, 1 local epoch of SGD, lr 0.08, momentum 0.9, weight decay
5e-4, batch 32; FedLAW with its defaults: 20 server epochs of Adam(0.01, betas (0.5, 0.999))
on a proxy set of 10 examples per class carved out of the test split):

{setups}

Seeds {", ".join(map(str, seeds))}; mean ± sample std over seeds. Accuracies are on the
central test set after each round (round 0, the initial model, excluded from "best").
FedLAW's test set is the test split (1 000 examples) minus its 100 proxy examples, FedAvg's
the whole split; the column "common test set" evaluates every run's final model on FedLAW's
900 examples, so both strategies are compared on the same examples (at a given seed the two
strategies also share the data, the partition and the initial model).

{results_table(results)}

The learned γ (FedLAW's global shrinking factor; 1 is FedAvg's plain weighted mean):

{gamma_table(results)}

Computed from the same runs:

{findings(results)}

FedLAW's server also learns (21 or 11 numbers per round) from 100 class-balanced examples
that FedAvg never sees; the runs are far shorter than the paper's 200 rounds on CIFAR-10.

Regenerate (from the repository root; complete runs under `runs/fedlaw/` are reused, delete
them to start over):

```bash
.venv/bin/python scenarios/fedlaw/make_table.py
```

It runs, in one process on one Ray runtime, the same points as

```bash
fedsim sweep scenarios/fedlaw/reference_scaled.toml --grid {GRID} --seeds 1,2,3 \\
    --out runs/fedlaw/reference_scaled
fedsim sweep scenarios/fedlaw/hard_100_clients.toml --grid {GRID} --seeds 1,2,3 \\
    --out runs/fedlaw/hard_100_clients
```

Machine: {machine()}, shared with other jobs while this ran (timings are indicative only);
torch {torch.__version__}, flwr {flwr.__version__}. Generated {time.strftime("%Y-%m-%d %H:%M %Z")}.
Wall time: {grid}{total:.0f} s summed over the {len(results)} runs' own wall times.
"""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--runs", type=Path, default=Path("runs/fedlaw"))
    parser.add_argument("--doc", type=Path, default=Path("docs/fedlaw-results.md"))
    parser.add_argument("--table-only", action="store_true", help="run nothing")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [s for s in args.scenarios.split(",") if s]
    torch.set_num_threads(1)  # the Ray actors need the other cores
    sweeps = plans(args.runs, names, seeds)
    timing_file = args.runs / TIMING_FILE
    if not args.table_only:
        ran = run_all(sweeps)
        if ran["runs"]:
            timing_file.write_text(json.dumps(ran))
    timing: dict[str, object] | None = None
    if timing_file.is_file():
        timing = json.loads(timing_file.read_text())
    results = [r for plan, name in zip(sweeps, names, strict=True) for r in collect(plan, name)]
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(markdown(results, sweeps, seeds, timing))
    print(results_table(results))
    print(json.dumps({"timing": timing, "doc": str(args.doc)}))


if __name__ == "__main__":
    main()
