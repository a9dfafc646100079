"""FedAvg vs FedLAW on the two FedLAW scenarios over seeds, scaled down.

It writes runs/fedlaw/scaled-results.md; docs/fedlaw-results.md, at the paper's
scale, is paper_table.py's.

FedLAW (Li et al., ICML 2023, https://arxiv.org/abs/2302.10911) claims that the learned
global shrinking factor γ ends below 1 and that FedLAW generalises better than FedAvg; its
reference code reportedly fails with 100 clients and 10% participation. This script checks
both on reference_scaled.toml and hard_100_clients.toml.

Every (scenario, strategy, seed) point is an ordinary ``fedsim sweep`` run, run in one
process on one Ray runtime (:func:`fedsim.paper_tables.run_plans`) into the same directories
as the ``fedsim sweep`` commands the page lists; a complete run is never redone, so an
interrupted table resumes. The shared machinery is :mod:`fedsim.paper_tables`; this file
holds the grid, the γ diagnostic, the common-test-set re-evaluation and the page's prose.

FedLAW evaluates on the test split minus its proxy set (10 examples per class), FedAvg on
the whole split. The table therefore also gives every run's final model's accuracy on the
*common* test set, FedLAW's (the same for both strategies at a given seed: the proxy set
depends only on the seed, and taking it out of the test split leaves the clients' data as
FedAvg has it).

Usage (from the repository root)::

    .venv/bin/python scenarios/fedlaw/make_table.py               # run what is missing, write
    .venv/bin/python scenarios/fedlaw/make_table.py --table-only  # only rewrite the markdown
    .venv/bin/python scenarios/fedlaw/make_table.py --seeds 1,2 --set rounds=4 \\
        --runs /tmp/fedlaw --doc /tmp/fedlaw.md                   # a quick pass
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.paper_tables import (
    Invocation,
    Sweep,
    argument_parser,
    command,
    complete_runs,
    differences_of,
    evaluate_final_model,
    grouped_markdown,
    mean_std,
    paired_differences,
    parse_seeds,
    provenance,
    run_plans,
    run_table,
    write_page,
)

HERE = Path(__file__).resolve().parent
SCENARIOS = ("reference_scaled", "hard_100_clients")
STRATEGIES = ("fedavg", "fedlaw")
SEEDS = (1, 2, 3)
GRID = "strategy.name=" + ",".join(STRATEGIES)
CHECKPOINTS = (1, 5, 10, 20)  # rounds at which the γ trajectory is shown (plus the last)


def gamma_of(path: Path, frame: pd.DataFrame) -> dict[str, pd.Series]:
    """FedLAW's γ per round (empty for FedAvg)."""
    rows = frame[(frame["metric"] == "gamma") & frame["client"].isna()]
    return {"gamma": rows.set_index("round")["value"].sort_index()}


def common_accuracy(runs: pd.DataFrame) -> pd.Series:
    """Each run's final model on FedLAW's test set at the same seed (NaN without that run)."""
    fedlaw = runs[runs["strategy.name"] == "fedlaw"].set_index(["scenario", "seed"])["path"]
    return pd.Series(
        [
            evaluate_final_model(r["path"], fedlaw[(r["scenario"], r["seed"])])
            if (r["scenario"], r["seed"]) in fedlaw.index
            else float("nan")
            for _, r in runs.iterrows()
        ],
        index=runs.index,
        dtype=float,
    )


def results_table(runs: pd.DataFrame) -> str:
    def column(field: str, digits: int = 3) -> Callable[[pd.DataFrame], str]:
        return lambda group: mean_std(group[field], digits=digits)

    def gamma_end(group: pd.DataFrame) -> str:
        return mean_std([float(g.iloc[-1]) for g in group["gamma"] if len(g)])

    table = grouped_markdown(
        runs,
        ["scenario", "strategy.name"],
        {
            "seeds": lambda group: str(len(group)),
            "final acc": column("final"),
            "best acc": column("best"),
            "final acc, common test set": column("common_final"),
            "γ at the end": gamma_end,
            "wall time per run (s)": column("wall_s", 0),
        },
        order=[(s, t) for s in SCENARIOS for t in STRATEGIES],
    )
    return table.replace("| scenario | strategy.name |", "| setup | strategy |", 1)


def gamma_table(runs: pd.DataFrame) -> str:
    """Mean ± std of γ over seeds at a few rounds, per setup."""
    lines: list[str] = []
    for scenario in SCENARIOS:
        gammas = [g for g in runs.loc[runs["scenario"] == scenario, "gamma"] if len(g)]
        if not gammas:
            continue
        last = int(min(g.index.max() for g in gammas))
        rounds = [t for t in CHECKPOINTS if t < last] + [last]
        if not lines:
            lines = ["| setup | " + " | ".join(f"round {t}" for t in rounds) + " | min over run |"]
            lines.append("|---|" + "---|" * (len(rounds) + 1))
        cells = [mean_std([float(g.get(t, np.nan)) for g in gammas]) for t in rounds]
        lowest = mean_std([float(g.min()) for g in gammas])
        lines.append(f"| {scenario} | " + " | ".join(cells) + f" | {lowest} |")
    return "\n".join(lines)


def findings(runs: pd.DataFrame) -> str:
    """Per setup: FedLAW − FedAvg paired by seed on the common test set, and where γ ends."""
    diffs = paired_differences(
        runs, "common_final", method="strategy.name", subject="fedlaw", by=["scenario"]
    )
    lines = []
    for scenario in SCENARIOS:
        gaps = differences_of(diffs, "fedavg", scenario=scenario)
        if not len(gaps):
            continue
        lines.append(
            f"- `{scenario}`: FedLAW − FedAvg, final accuracy on the common test set, paired by "
            f"seed: {mean_std(gaps)} (FedLAW higher at {int((gaps > 0).sum())} of {len(gaps)} "
            "seeds)."
        )
        fedlaw = runs[(runs["scenario"] == scenario) & (runs["strategy.name"] == "fedlaw")]
        gammas = list(fedlaw.sort_values("seed")["gamma"])
        below = sum(float(g.iloc[-1]) < 1 for g in gammas)
        share = mean_std([float((g < 1).mean()) for g in gammas], digits=2)
        lines.append(
            f"- `{scenario}`: γ at the last round below 1 at {below} of {len(gammas)} seeds; "
            f"γ averaged over all rounds {mean_std([float(g.mean()) for g in gammas])}; "
            f"share of rounds with γ < 1: {share}."
        )
    return "\n".join(lines)


def setup_line(sweep: Sweep, runs: Path, seeds: Sequence[int], extra: Sequence[str]) -> str:
    """``- `name`: N clients, who participates, R rounds;`` from the sweep's scenario."""
    scenario = sweep.plan(runs, seeds, extra).points[0].scenario
    participation = dict(scenario.participation)
    who = (
        "all participating"
        if participation.get("pattern") == "always"
        else f"{participation.get('clients_per_round')} drawn uniformly per round"
    )
    return (
        f"- `{sweep.name}`: {scenario.data.num_clients} clients, {who}, {scenario.rounds} rounds;"
    )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argument_parser(
        (__doc__ or "").splitlines()[0],
        seeds=SEEDS,
        runs=Path("runs/fedlaw"),
        doc=Path("runs/fedlaw/scaled-results.md"),
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    sweeps = [Sweep(HERE / f"{n}.toml", n, (GRID,)) for n in args.scenarios.split(",") if n]
    plans = [sweep.plan(args.runs, seeds, args.overrides) for sweep in sweeps]
    if not args.table_only:
        ran = run_plans(plans)
        if ran is not None:
            ran.save(args.runs)
    labels = {
        path: {"scenario": sweep.name}
        for sweep, plan in zip(sweeps, plans, strict=True)
        for path in complete_runs(plan)
    }
    # round 0 (the initial model) is no result: "final" and "best" are over rounds 1 ...
    runs = run_table(labels, "accuracy", rounds=(1, None), extra=gamma_of)
    runs["common_final"] = common_accuracy(runs)
    print(results_table(runs))
    if args.no_doc:
        return
    last = Invocation.last(args.runs)
    timing = (
        f"the invocation that ran {last.ran} of them took {last.wall_s} s "
        f"(finished {last.finished}); "
        if last
        else ""
    )
    setups = "\n".join(setup_line(s, args.runs, seeds, args.overrides) for s in sweeps)
    sweep_commands = "\n".join(s.command(args.runs, seeds, args.overrides) for s in sweeps)
    info = provenance()
    page = f"""# FedLAW vs FedAvg

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

{results_table(runs)}

The learned γ (FedLAW's global shrinking factor; 1 is FedAvg's plain weighted mean):

{gamma_table(runs)}

Computed from the same runs:

{findings(runs)}

FedLAW's server also learns (21 or 11 numbers per round) from 100 class-balanced examples
that FedAvg never sees; the runs are far shorter than the paper's 200 rounds on CIFAR-10.

Regenerate (from the repository root; complete runs under `{args.runs}/` are reused, delete
them to start over):

```bash
{command("scenarios/fedlaw/make_table.py", argv)}
```

It runs, in one process on one Ray runtime, the same points as

```bash
{sweep_commands}
```

Machine: {info["machine"]}, shared with other jobs while this ran (timings are indicative
only); torch {info["torch"]}, flwr {info["flwr"]}. Generated {info["date"]}.
Wall time: {timing}{runs["wall_s"].sum():.0f} s summed over the {len(runs)} runs' own wall times.
"""
    write_page(args.doc, page)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
