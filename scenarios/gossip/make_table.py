"""Regenerate docs/gossip-results.md: gossip, variance-corrected gossip, D-PSGD and FedAvg.

The question is Tian et al. 2024's claim ("Vanishing Variance Problem in Fully
Decentralized Neural-Network Systems", https://arxiv.org/abs/2404.04616): from
independent initialisations, variance correction lets gossip averaging converge
about as fast as FedAvg, several times faster than plain gossip. Every
configuration (method × split × seed) of ``rr8_iid.toml`` / ``rr8_dirichlet.toml``
runs in this one Python process (Ray started once, one ``run_scenario`` each);
a configuration whose run directory already has a ``summary.json`` of at least
``--rounds`` rounds is not run again (an interrupted grid resumes; a longer run
is read up to ``--rounds``: every random stream is keyed by the round, not by
the run's length, so its first rounds are those of a shorter run). Then the
markdown table is written.

    .venv/bin/python scenarios/gossip/make_table.py --rounds 12 --seeds 1 2 3

Accuracy is the mean over nodes of each node's own model on the held-out test
set (``node_accuracy_mean``); for FedAvg every node holds the global model, so it
is the global model's ``accuracy``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SPLITS = {"IID": HERE / "rr8_iid.toml", "Dirichlet 0.5": HERE / "rr8_dirichlet.toml"}
METHODS: dict[str, list[str]] = {
    "gossip": ["strategy.name=gossip"],
    "gossip-vc": ["strategy.name=gossip-vc"],
    "dpsgd": ["strategy.name=dpsgd"],
    "fedavg": ['strategy={name="fedavg"}'],
}
LABELS = {
    "gossip": "plain gossip",
    "gossip-vc": "variance-corrected gossip",
    "dpsgd": "D-PSGD (Metropolis–Hastings)",
    "fedavg": "FedAvg (server, all nodes)",
}


@dataclass(frozen=True)
class Config:
    split: str
    method: str
    seed: int

    def directory(self, root: Path) -> Path:
        split = "iid" if self.split == "IID" else "dirichlet"
        return root / f"{split}-{self.method}-s{self.seed}"

    def overrides(self, rounds: int) -> list[str]:
        return [f"seed={self.seed}", f"rounds={rounds}", *METHODS[self.method]]


def accuracy_curve(run_dir: Path, rounds: int) -> pd.Series:
    """Round → mean node accuracy (FedAvg: the global model's accuracy), rounds 1..rounds."""
    from fedsim.analysis import load_run

    metrics = load_run(run_dir).metrics
    central = metrics[(metrics.phase == "central") & metrics.client.isna()]
    name = "node_accuracy_mean" if (central.metric == "node_accuracy_mean").any() else "accuracy"
    curve = central[central.metric == name].set_index("round")["value"]
    return curve[(curve.index >= 1) & (curve.index <= rounds)].sort_index()


def rounds_to(curve: pd.Series, target: float) -> int | None:
    """The first round whose accuracy reaches ``target``; None if none does.

    >>> rounds_to(pd.Series([0.5, 0.85, 0.7], index=[1, 2, 3]), 0.8)
    2
    """
    reached = curve[curve >= target]
    return int(reached.index[0]) if len(reached) else None


def mean_std(values: list[float], digits: int) -> str:
    """``mean ± std`` (sample std, n − 1) of ``values``.

    >>> mean_std([1.0, 2.0, 3.0], 1)
    '2.0 ± 1.0'
    """
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return f"{array.mean():.{digits}f} ± {std:.{digits}f}"


def rounds_cell(reached: list[int | None], rounds: int) -> str:
    """Mean ± std over the seeds that reached the target, and how many did.

    >>> rounds_cell([10, 12, None], 30)
    '11.0 ± 1.4 (2/3 seeds)'
    >>> rounds_cell([None, None], 30)
    '> 30 (0/2 seeds)'
    """
    hits = [r for r in reached if r is not None]
    if not hits:
        return f"> {rounds} (0/{len(reached)} seeds)"
    return f"{mean_std([float(h) for h in hits], 1)} ({len(hits)}/{len(reached)} seeds)"


def done(run_dir: Path, rounds: int) -> bool:
    """Whether ``run_dir`` holds a finished run of at least ``rounds`` rounds."""
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text())["rounds"] >= rounds


def run_grid(configs: list[Config], rounds: int, root: Path) -> dict[Config, float]:
    """Run every configuration without a summary.json; returns the wall time of those run."""
    import ray
    import torch

    from fedsim.config import load_scenario
    from fedsim.run import run_scenario

    # The server evaluates 50 node models every round in this process: one thread is
    # many times faster than torch's default on an oversubscribed machine.
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    pending = [c for c in configs if not done(c.directory(root), rounds)]
    walls: dict[Config, float] = {}
    if not pending:
        return walls
    ray.init(include_dashboard=False, logging_level=logging.ERROR)
    try:
        for number, config in enumerate(pending, start=1):
            scenario = load_scenario(SPLITS[config.split], config.overrides(rounds))
            run_dir = config.directory(root)
            if run_dir.exists():  # an interrupted run: start it again from scratch
                for path in sorted(run_dir.rglob("*"), reverse=True):
                    path.unlink() if path.is_file() else path.rmdir()
            started = time.perf_counter()
            _, summary = run_scenario(scenario, run_dir)
            walls[config] = time.perf_counter() - started
            print(
                f"[{number}/{len(pending)}] {config.split} {config.method} seed {config.seed}: "
                f"{walls[config]:.1f} s, average-model accuracy {summary['final_accuracy']:.3f}",
                flush=True,
            )
    finally:
        ray.shutdown()
    return walls


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def table(configs: list[Config], rounds: int, targets: list[float], root: Path) -> str:
    """The markdown results table: one row per split × method."""
    lines = [
        "| split | method | "
        + "".join(f"rounds to ≥ {target} | " for target in targets)
        + f"accuracy after {rounds} rounds | spread across nodes after {rounds} rounds |",
        "|---|---|" + "---|" * (len(targets) + 2),
    ]
    groups: dict[tuple[str, str], list[Config]] = {}
    for config in configs:
        groups.setdefault((config.split, config.method), []).append(config)
    for (split, method), members in groups.items():
        curves = [accuracy_curve(c.directory(root), rounds) for c in members]
        finals = [float(curve.iloc[-1]) for curve in curves]
        spreads = [node_spread(c.directory(root), rounds) for c in members]
        spread = mean_std(spreads, 3) if all(s == s for s in spreads) else "— (one model)"
        reached = "".join(
            f"{rounds_cell([rounds_to(curve, target) for curve in curves], rounds)} | "
            for target in targets
        )
        lines.append(f"| {split} | {LABELS[method]} | {reached}{mean_std(finals, 3)} | {spread} |")
    return "\n".join(lines)


def node_spread(run_dir: Path, rounds: int) -> float:
    """Round ``rounds``'s std of node accuracies (NaN for FedAvg: one global model)."""
    from fedsim.analysis import load_run

    metrics = load_run(run_dir).metrics
    rows = metrics[
        (metrics.phase == "central")
        & (metrics.metric == "node_accuracy_std")
        & (metrics["round"] == rounds)
    ]
    return float(rows["value"].iloc[0]) if len(rows) else float("nan")


def curves_table(configs: list[Config], root: Path, rounds: int, every: int) -> str:
    """Mean node accuracy (mean over seeds) every ``every`` rounds, one row per split × method."""
    groups: dict[tuple[str, str], list[pd.Series]] = {}
    for config in configs:
        curve = accuracy_curve(config.directory(root), rounds)
        groups.setdefault((config.split, config.method), []).append(curve)
    shown = [r for r in range(1, rounds + 1) if r == 1 or r % every == 0]
    lines = [
        "| split | method | " + " | ".join(f"r{r}" for r in shown) + " |",
        "|---|---|" + "---|" * len(shown),
    ]
    for (split, method), curves in groups.items():
        mean = pd.concat(curves, axis=1).mean(axis=1)
        cells = " | ".join(f"{mean[r]:.2f}" for r in shown)
        lines.append(f"| {split} | {LABELS[method]} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.6, 0.8])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--splits", nargs="+", default=["iid", "dirichlet"])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "gossip")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "gossip-results.md")
    parser.add_argument("--no-doc", action="store_true", help="run the grid, print the table")
    args = parser.parse_args()
    splits = [s for s in SPLITS if ("iid" if s == "IID" else "dirichlet") in args.splits]
    configs = [Config(s, m, seed) for s in splits for m in args.methods for seed in args.seeds]
    started = time.perf_counter()
    walls = run_grid(configs, args.rounds, args.runs)
    total = time.perf_counter() - started
    results = table(configs, args.rounds, args.targets, args.runs)
    curves = curves_table(configs, args.runs, args.rounds, every=2)
    print(results, curves, sep="\n\n")
    if walls:
        each = np.mean(list(walls.values()))
        print(f"grid: {len(walls)} runs in {total:.0f} s ({each:.1f} s each)")
    if args.no_doc:
        return
    command = " ".join(
        [".venv/bin/python", "scenarios/gossip/make_table.py", *sys.argv[1:]]
    ).replace(str(ROOT) + "/", "")
    generated = render(
        results=results,
        curves=curves,
        command=command,
        run_walls=[run_wall(c.directory(args.runs)) for c in configs],
        longer=sum(run_rounds(c.directory(args.runs)) > args.rounds for c in configs),
        invocation=(total, len(walls)),
        rounds=args.rounds,
        seeds=args.seeds,
    )
    args.doc.write_text(splice(args.doc.read_text() if args.doc.is_file() else None, generated))
    print(f"wrote {args.doc}")


BEGIN, END = "<!-- make_table.py: begin -->", "<!-- make_table.py: end -->"


def splice(document: str | None, generated: str) -> str:
    """``generated`` between the markers of ``document`` (hand-written text around it kept).

    >>> splice(f"intro {BEGIN} old {END} outro", "new").replace(BEGIN, "<").replace(END, ">")
    'intro <\\nnew\\n> outro'
    """
    block = f"{BEGIN}\n{generated}\n{END}"
    if document is None or BEGIN not in document or END not in document:
        return f"# Variance-corrected gossip: results\n\n{block}\n"
    head, rest = document.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def run_wall(run_dir: Path) -> float:
    """The run's own wall time (``summary.json``), Ray start-up excluded."""
    return float(json.loads((run_dir / "summary.json").read_text())["wall_time_s"])


def run_rounds(run_dir: Path) -> int:
    """How many rounds the run in ``run_dir`` ran."""
    return int(json.loads((run_dir / "summary.json").read_text())["rounds"])


def render(
    *,
    results: str,
    curves: str,
    command: str,
    run_walls: list[float],
    longer: int,
    invocation: tuple[float, int],
    rounds: int,
    seeds: list[int],
) -> str:
    """The generated part of the results page: tables, command, machine, date, wall time."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    seconds, ran = invocation
    wall = (
        f"{len(run_walls)} runs, {sum(run_walls) / 60:.1f} min in all "
        f"({np.mean(run_walls):.0f} s per run on average, {min(run_walls):.0f}–"
        f"{max(run_walls):.0f} s; Ray's start-up not included)"
    )
    if longer:
        wall += (
            f"; {longer} of them ran more rounds (their wall time included) and are read "
            f"up to round {rounds}"
        )
    if ran:
        wall += f"; the last invocation ran {ran} of them in {seconds / 60:.1f} min"
    return GENERATED.format(
        results=results,
        curves=curves,
        command=command,
        commit=commit,
        machine=machine(),
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
        wall=wall,
        rounds=rounds,
        seeds=", ".join(str(s) for s in seeds),
        python=platform.python_version(),
    )


GENERATED = """\
{results}

Rounds to a target: the first round whose accuracy reaches it (evaluated every
round), mean ± sample std over the seeds that reached it within {rounds} rounds.
Accuracy and spread (the std of the 50 node accuracies) at round {rounds}, mean ±
sample std over seeds.

Mean node accuracy, averaged over seeds {seeds}, by round:

{curves}

Regenerate (runs go to `runs/gossip/`, git-ignored; finished runs are reused):

```bash
{command}
```

- Machine: {machine}; shared with other jobs
  while it ran. Python {python}, commit {commit} plus that day's working tree.
- Date: {date}. Wall time: {wall}.
- {rounds} rounds per run, seeds {seeds}; a seed draws the split, the graph, every
  node's initialisation and the minibatch order.\
"""


if __name__ == "__main__":
    main()
