"""FedAU against its baselines (6 methods × 3 participation patterns × seeds), scaled
down: runs/fedau/scaled-results.md (docs/fedau-results.md, at the paper's scale, is
paper_table.py's).

FedAU (Wang & Ji, ICLR 2024, https://arxiv.org/abs/2306.03401; reference code
github.com/IBM/fedau) claims that weighting each participant by ω_n, an online estimate of
1/p_n learned from who replied, beats FedAvg over the participants and FedAvg over all
clients when clients take part with unknown, uneven probabilities p_n, and is competitive
with the oracle that knows p_n, MIFA and FedVARP. This script checks that claim at a scale
a shared 2-core machine runs in half an hour, and checks that ω tracks 1/p_n.

Each pattern's scenario file (``bernoulli.toml``, ``markov.toml``, ``cyclic.toml``: Dirichlet
0.1 "chunks" split, I = 5 plain SGD steps, batch 16, label-based p_n with p_mean 0.1 and
p_min 0.02) is reused with the ``SCALE`` overrides below (digits and a small MLP, so that a
run takes seconds). Every (pattern, method, seed) is an ordinary ``fedsim sweep`` point, run
in one process on one Ray runtime (:func:`fedsim.paper_tables.run_plans`) into the same
directories as the ``fedsim sweep`` commands the page lists; a complete run is never redone,
so an interrupted table resumes. The shared machinery (running, per-run results, mean ± std
and paired-difference tables, the page's provenance) is :mod:`fedsim.paper_tables`; this file
holds the paper's grid, its ω-vs-1/p_n diagnostic and the page's prose.

Methods, each at the reference code's setting (ALGORITHMS.md; nothing was tuned here):
FedAU local lr 0.1, η_g 1; FedAvg over participants local 0.0562, η_g 1.78; FedAvg over all
clients local 0.1, η_g 10; the known-probability oracle, MIFA and FedVARP local 0.1, η_g 1.

Usage (from the repository root)::

    .venv/bin/python scenarios/fedau/make_table.py               # run what is missing, write
    .venv/bin/python scenarios/fedau/make_table.py --table-only  # only rewrite the markdown
    .venv/bin/python scenarios/fedau/make_table.py --seeds 1     # a first pass at one seed
    .venv/bin/python scenarios/fedau/make_table.py --patterns bernoulli --seeds 1,2 \
        --set rounds=10 --runs /tmp/fedau --doc /tmp/fedau.md    # a quick pass
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fedsim.analysis import load_run, omega_vs_probability, server_rows
from fedsim.paper_tables import (
    Invocation,
    Sweep,
    argument_parser,
    command,
    complete_runs,
    mean_std,
    paired_differences,
    parse_seeds,
    pivot_markdown,
    provenance,
    run_plans,
    run_table,
    wins,
    write_page,
)
from fedsim.simulation.sweep import format_value

HERE = Path(__file__).resolve().parent
PATTERNS = ("bernoulli", "markov", "cyclic")
SEEDS = (1, 2, 3)
# The pattern files run MNIST-1D and FedAU's CNN for 500 rounds; this is the same comparison
# at the size the time budget allows (see docs/fedau-results.md for how it was sized).
SCALE = (
    'data.dataset="digits"',
    'model.name="mlp"',
    "model.hidden=[64]",
    "rounds=200",
    "evaluate.every=2",
    "engine.num_actors=1",
    "checkpoint.every=0",  # a sweep redoes an interrupted run from scratch anyway
)
BUDGET_S = 1800  # the whole table should take at most this long on the shared 2-core machine
LAST_FRACTION = 0.1  # the paper reports the mean test accuracy over the last rounds


@dataclass(frozen=True)
class Method:
    """One baseline of the paper: its ``[strategy]`` table and its local learning rate."""

    label: str
    strategy: dict[str, Any]
    client_lr: float


METHODS = (
    Method("FedAU", {"name": "fedau", "server_lr": 1.0}, 0.1),
    Method(
        "FedAvg, participating",
        {"name": "fedavg", "rule": "participating", "server_lr": 1.78},
        0.0562,
    ),
    Method("FedAvg, all", {"name": "fedavg", "rule": "all", "server_lr": 10.0}, 0.1),
    Method(
        "FedAvg, known p_n (oracle)",
        {"name": "fedavg", "rule": "known-probability", "server_lr": 1.0},
        0.1,
    ),
    Method("MIFA", {"name": "mifa", "server_lr": 1.0}, 0.1),
    Method("FedVARP", {"name": "fedvarp", "server_lr": 1.0}, 0.1),
)
LABELS = [m.label for m in METHODS]


def toml_table(table: Mapping[str, Any]) -> str:
    """An inline TOML table, as ``--grid`` and ``--set`` read it.

    >>> toml_table({"name": "fedavg", "rule": "all", "server_lr": 10.0})
    '{name="fedavg",rule="all",server_lr=10.0}'
    """
    return "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in table.items()) + "}"


def sweeps(patterns: Sequence[str]) -> list[tuple[str, Sweep]]:
    """Per pattern, one sweep per distinct local learning rate (a grid cannot pair two
    keys): (pattern, sweep) pairs, into ``PATTERN`` and ``PATTERN-lrLR`` folders."""
    rates = sorted({m.client_lr for m in METHODS}, reverse=True)
    found = []
    for pattern in patterns:
        for lr in rates:
            grid = "strategy=" + ",".join(
                toml_table(m.strategy) for m in METHODS if m.client_lr == lr
            )
            name = pattern if lr == 0.1 else f"{pattern}-lr{lr:g}"
            sweep = Sweep(HERE / f"{pattern}.toml", name, (grid,), (*SCALE, f"client.lr={lr}"))
            found.append((pattern, sweep))
    return found


def method_of(strategy: Mapping[str, Any], client_lr: float) -> str:
    for method in METHODS:
        if dict(strategy) == method.strategy and math.isclose(client_lr, method.client_lr):
            return method.label
    return f"{format_value(dict(strategy))}, lr {client_lr:g}"


def last_rounds_mean(accuracy: pd.Series, rounds: int, fraction: float = LAST_FRACTION) -> float:
    """Mean of the evaluations in the last ``fraction`` of the rounds (rounds > (1 − f)·R).

    >>> last_rounds_mean(pd.Series([0.1, 0.5, 0.7], index=[0, 9, 10]), rounds=10)
    0.7
    """
    start = rounds - max(1, round(fraction * rounds))
    return float(accuracy[accuracy.index > start].mean())


def last_mean(path: Path, frame: pd.DataFrame) -> dict[str, float]:
    """The paper's number for one run: mean test accuracy over the last 10% of the rounds."""
    accuracy = server_rows(frame, "accuracy").set_index("round")["value"].sort_index()
    return {"last_mean": last_rounds_mean(accuracy, int(frame["rounds"].iloc[0]))}


# --- the tables --------------------------------------------------------------------------------


def percent_cell(seeds: int) -> Callable[[Sequence[float]], str]:
    """Accuracy in percent over seeds; a cell over fewer than ``seeds`` seeds shows its count."""

    def cell(values: Sequence[float]) -> str:
        count = f" ({len(values)} seeds)" if values and len(values) != seeds else ""
        return mean_std(values, digits=1, scale=100.0) + count

    return cell


def accuracy_table(runs: pd.DataFrame, field: str, patterns: Sequence[str], seeds: int) -> str:
    """Methods down, patterns across."""
    return pivot_markdown(
        runs,
        field,
        rows="method",
        columns="pattern",
        row_order=LABELS,
        column_order=patterns,
        cell=percent_cell(seeds),
    )


def margin_cell(differences: Sequence[float]) -> str:
    """Mean paired difference in points and on how many seeds FedAU is ahead."""
    if not differences:
        return "—"
    points = np.asarray(differences, dtype=float) * 100
    return f"{points.mean():+.1f} ({wins(points)})"


def margin_table(runs: pd.DataFrame, patterns: Sequence[str]) -> str:
    """FedAU minus every other method, per pattern: the mean over seeds of the paired
    difference of the last-10% accuracy (points), and on how many seeds FedAU is ahead."""
    diffs = paired_differences(runs, "last_mean", method="method", subject="FedAU", by=["pattern"])
    return pivot_markdown(
        diffs,
        "difference",
        rows="pattern",
        columns="baseline",
        row_order=patterns,
        column_order=LABELS[1:],
        cell=margin_cell,
    )


def verdict(runs: pd.DataFrame, patterns: Sequence[str]) -> str:
    """One sentence: in how many patterns FedAU's mean is above both FedAvg variants'."""
    ahead = []
    for pattern in patterns:
        here = runs[runs["pattern"] == pattern]
        means = [here.loc[here["method"] == m, "last_mean"] for m in LABELS[:3]]
        if all(len(m) for m in means) and all(means[0].mean() > m.mean() for m in means[1:]):
            ahead.append(pattern)
    return (
        f"FedAU's mean is above both FedAvg variants' in {len(ahead)} of {len(patterns)} "
        f"patterns ({', '.join(ahead) or 'none'})."
    )


def omega_table(runs: pd.DataFrame, patterns: Sequence[str]) -> str:
    """Correlation of each FedAU run's last ω per client with 1/p_n."""
    lines = [
        "| pattern | seed | clients with ω | Pearson r(ω, 1/p_n) | Spearman ρ | "
        "median ω·p_n | r, clients with ≥ 3 replies (count) |",
        "|---|---|---|---|---|---|---|",
    ]
    fedau = runs[runs["method"] == "FedAU"].sort_values("seed", kind="stable")
    for pattern in patterns:
        for _, r in fedau[fedau["pattern"] == pattern].iterrows():
            table = omega_vs_probability(r["path"])
            replies = load_run(r["path"]).participation.query("replied").groupby("client").size()
            table["replies"] = replies.reindex(table["client"]).fillna(0).to_numpy()
            pearson = stats.pearsonr(table["omega"], table["inverse_p"]).statistic
            spearman = stats.spearmanr(table["omega"], table["inverse_p"]).statistic
            ratio = float(np.median(table["omega"] * table["p_n"]))
            often = table[table["replies"] >= 3]
            often_r = (
                stats.pearsonr(often["omega"], often["inverse_p"]).statistic
                if len(often) > 2
                else float("nan")
            )
            lines.append(
                f"| {pattern} | {r['seed']} | {len(table)} | {pearson:.2f} | {spearman:.2f} "
                f"| {ratio:.2f} | {often_r:.2f} ({len(often)}) |"
            )
    return "\n".join(lines)


def wall_table(runs: pd.DataFrame, patterns: Sequence[str]) -> str:
    return pivot_markdown(
        runs,
        "wall_s",
        rows="method",
        columns="pattern",
        row_order=LABELS,
        column_order=patterns,
        cell=lambda v: mean_std(v, digits=0),
    )


def invocation_text(last: Invocation | None) -> str:
    if last is None:
        return ""
    over = "; over the 30-minute budget the size was chosen for, because of the load"
    return (
        f"{last.wall_s:.0f} s ({last.wall_s / 60:.1f} min) for the last invocation of the "
        f"script, started {last.started} ({last.ran} runs ran in it; load average "
        f"{last.load_start} at its start, {last.load_end} at its end"
        + (over if last.wall_s > BUDGET_S else "")
        + "); "
    )


DOC_TEMPLATE = """# FedAU against its baselines under heterogeneous participation

FedAU (Wang & Ji, ICLR 2024, <https://arxiv.org/abs/2306.03401>; reference code
github.com/IBM/fedau) weights each participant's update by ω_n, the mean length of its
completed participation intervals, an online estimate of 1/p_n, and divides by all N clients.
The paper's claim: under unknown, heterogeneous participation FedAU beats FedAvg over the
participants and FedAvg over all clients under Bernoulli, Markovian and cyclic participation,
and is competitive with the known-probability oracle, MIFA and FedVARP. This page checks the
claim at a size a shared 2-core CPU machine runs in about half an hour.

## Setup

The pattern scenarios `scenarios/fedau/{{bernoulli,markov,cyclic}}.toml` (FedAU's Dirichlet(0.1)
"chunks" split over N = 100 clients, I = 5 plain SGD steps of batch 16 per round, no momentum
or weight decay, label-based rates p_n = max(p_min, (d_n · m) · p_mean · C) with
m ~ Dirichlet(0.1), p_mean = 0.1, p_min = 0.02; Markovian a = 0.05; cyclic P = 100), run with
these overrides:

```
{scale}
```

that is scikit-learn's digits (1 438 training and 359 test images, 8×8) and an MLP with one
hidden layer of 64 instead of MNIST-1D and FedAU's CNN, {rounds} rounds instead of 500, the
central test accuracy every 2 rounds, one Ray actor per run and no checkpoints. p_n is drawn
per seed (the mean over clients is about 0.11; in each of seeds 1 to 3 the holders of one
class have p_n ≈ 0.4 on average and most other classes' 0.04 to 0.1), so about 11 clients
reply per round.

Each method runs at the reference code's setting (ALGORITHMS.md), the same for every pattern;
nothing was tuned on these results:

| method | fedsim strategy | local lr | η_g |
|---|---|---|---|
| FedAU | `fedau` (cutoff K = ∞) | 0.1 | 1 |
| FedAvg, participating | `fedavg`, rule `participating` | 0.0562 | 1.78 |
| FedAvg, all | `fedavg`, rule `all` | 0.1 | 10 |
| FedAvg, known p_n (oracle) | `fedavg`, rule `known-probability` (p_n injected) | 0.1 | 1 |
| MIFA | `mifa` | 0.1 | 1 |
| FedVARP | `fedvarp` | 0.1 | 1 |

The reference gives η_g for FedAU and the two FedAvg variants; the oracle, MIFA and FedVARP
use FedAU's setting (their updates have the scale of one full-participation step, as
FedAU's does).

How the size was chosen: a run's cost here is the cost of a round's messages (about
11 per round), not the model, so a smaller model barely helps, and N = 100 is the smallest N
considered. The horizon was set to 4/p_min = 200 rounds so that even the rarest clients
(p_n = 0.02) complete intervals and FedAU's ω is an estimate, not its initial value 1, for
most clients (a client's first reply always gets ω = 1, so FedAU's first rounds move the
model by about |S_t|/N ≈ 0.1 of a FedAvg step). One pilot informed this choice: FedAU and
FedAvg over participants under Bernoulli participation, seed 1, 200 rounds, where FedAU was
behind until about round 130 and ahead after it. Shorter horizons therefore favour the
FedAvg variants, longer ones FedAU.

## Results

Mean test accuracy (%) over the last 10% of the rounds (the {last} rounds after round
{rounds} − {last}, an evaluation every 2 rounds; the paper reports this quantity), mean ± sample
std over seeds {seeds}:

{last_table}

Final test accuracy (%) after round {rounds}:

{final_table}

{verdict} FedAU minus each other method, last-10% accuracy in points, mean over seeds
of the paired difference (at a given seed every method sees the same data, split, initial
model and p_n), and on how many seeds FedAU is ahead:

{margin_table}

One test image is 0.28 points of accuracy; p_n is redrawn with each seed, so the std over
seeds also spans different participation profiles.

## Does ω track 1/p_n?

For every FedAU run, each client's last recorded ω (phase `server`, metric `omega`: the ω
its last reply was weighted with) against 1/p_n, with p_n rebuilt by
`fedsim.participation.build_pattern` from the run's own scenario and label mix
(`fedsim.analysis.omega_vs_probability`). ω is a mean of intervals that ended before that
reply, capped by the {rounds} rounds of a run, and is 1 for a client whose only reply was its
first, hence the column for clients that replied at least 3 times:

{omega_table}

Under Bernoulli participation the intervals are geometric with mean 1/p_n; within a finite
run an interval is counted only once it has ended, which biases ω low for the rarest clients
(an interval longer than what is left of the run is never seen). Under cyclic participation
a client's intervals are, per period, (on-length − 1) intervals of 1 round and one of
P − on-length + 1 rounds, whose mean is P / on-length ≈ 1/p_n; under Markovian participation
they mix short on-runs and long off-runs with the same mean 1/p_n.

## Cost and how to regenerate

Wall time per run (s), mean ± std over seeds:

{wall_table}

Regenerate from the repository root (complete runs under `runs/fedau/` are reused; delete
that folder to start over):

```bash
{command}
```

It runs, in one process on one Ray runtime (`ray.init(num_cpus=2)`), the same points as
these `fedsim sweep` commands (a grid cannot pair two keys, so FedAvg over participants,
whose local learning rate differs, is a sweep of its own), into the same directories;
`fedsim report runs/fedau/bernoulli` draws the accuracy curves, the participation matrix and
ω against 1/p_n:

```bash
{commands}
```

The paper-size configuration (CIFAR-10 from local files, N = 250, FedAU's CNN, 2000 rounds)
is `scenarios/fedau/cifar10_full.toml`; it needs the data and, realistically, a GPU.

Machine: {machine}, shared with other jobs while this ran (timings are indicative only);
torch {torch}, flwr {flwr}. Generated {date}.
Wall time: {invocation}{total} summed over the {runs} runs' own wall times.
"""


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argument_parser(
        (__doc__ or "").splitlines()[0],
        seeds=SEEDS,
        runs=Path("runs/fedau"),
        doc=Path("runs/fedau/scaled-results.md"),
    )
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time per sweep")
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    patterns = [p for p in args.patterns.split(",") if p]
    found = sweeps(patterns)
    plans = [sweep.plan(args.runs, seeds, args.overrides) for _, sweep in found]
    if not args.table_only:
        ran = run_plans(plans, parallel=args.parallel, num_cpus=2)
        if ran is not None:
            ran.save(args.runs)
    labels = {
        path: {
            "pattern": pattern,
            "method": method_of(point.settings["strategy"], point.scenario.client.lr),
        }
        for (pattern, _), plan in zip(found, plans, strict=True)
        for path, point in complete_runs(plan).items()
    }
    runs = run_table(labels, "accuracy", extra=last_mean)
    print(accuracy_table(runs, "last_mean", patterns, len(seeds)))
    if args.no_doc:
        return
    rounds = plans[0].points[0].scenario.rounds
    info = provenance()
    total = float(runs["wall_s"].sum())
    page = DOC_TEMPLATE.format(
        seeds=", ".join(map(str, seeds)),
        rounds=rounds,
        last=max(1, round(LAST_FRACTION * rounds)),
        scale="\n".join(f"    --set {s}" for s in (*SCALE, *args.overrides)),
        last_table=accuracy_table(runs, "last_mean", patterns, len(seeds)),
        final_table=accuracy_table(runs, "final", patterns, len(seeds)),
        verdict=verdict(runs, patterns),
        margin_table=margin_table(runs, patterns),
        omega_table=omega_table(runs, patterns),
        wall_table=wall_table(runs, patterns),
        command=command("scenarios/fedau/make_table.py", argv),
        commands="\n".join(s.command(args.runs, seeds, args.overrides) for _, s in found),
        invocation=invocation_text(Invocation.last(args.runs)),
        total=f"{total:.0f} s ({total / 60:.1f} min)",
        runs=len(runs),
        **info,
    )
    write_page(args.doc, page)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
