"""Gossip, variance-corrected gossip, D-PSGD and FedAvg, scaled down.

It writes runs/gossip/scaled-results.md; docs/gossip-results.md, along network
size, is size_table.py's.

The question is Tian et al. 2024's claim ("Vanishing Variance Problem in Fully
Decentralized Neural-Network Systems", https://arxiv.org/abs/2404.04616): from
independent initialisations, variance correction lets gossip averaging converge
about as fast as FedAvg, several times faster than plain gossip. Every
configuration (method × split × seed) of ``rr8_iid.toml`` / ``rr8_dirichlet.toml``
runs in this one Python process (Ray started once,
:func:`fedsim.paper_tables.run_scenarios`), into ``runs/gossip/SPLIT-METHOD-sSEED``;
a configuration whose run directory already has a ``summary.json`` of at least
``--rounds`` rounds is not run again (an interrupted grid resumes; a longer run
is read up to ``--rounds``: every random stream is keyed by the round, not by
the run's length, so its first rounds are those of a shorter run). Then the
generated part of the page (between its ``make_table.py`` markers) is rewritten;
the hand-written text around it is kept. The shared machinery is
:mod:`fedsim.paper_tables`; this file holds the grid, the node-spread diagnostic
and the generated text.

    .venv/bin/python scenarios/gossip/make_table.py --rounds 12 --seeds 1 2 3
    .venv/bin/python scenarios/gossip/make_table.py --rounds 3 --seeds 1 2 --splits iid \\
        --runs /tmp/gossip --doc /tmp/gossip.md   # a quick pass

Accuracy is the mean over nodes of each node's own model on the held-out test
set (``node_accuracy_mean``); for FedAvg every node holds the global model, so it
is the global model's ``accuracy``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from fedsim.paper_tables import (
    Extra,
    Invocation,
    argument_parser,
    command,
    grouped_markdown,
    mean_std,
    parse_seeds,
    provenance,
    run_scenarios,
    run_table,
    write_page,
)

HERE = Path(__file__).resolve().parent
SPLITS = {
    "iid": ("IID", HERE / "rr8_iid.toml"),
    "dirichlet": ("Dirichlet 0.5", HERE / "rr8_dirichlet.toml"),
}
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
TITLE = "Variance-corrected gossip: results"
Cell = Callable[[pd.DataFrame], str]


def done(run_dir: Path, rounds: int) -> bool:
    """Whether ``run_dir`` holds a finished run of at least ``rounds`` rounds."""
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text())["rounds"] >= rounds


def node_extras(rounds: int) -> Extra:
    """Per run: the mean-node-accuracy curve and the node spread at round ``rounds``
    (the std of the node accuracies; NaN for FedAvg: one global model)."""

    def extra(path: Path, frame: pd.DataFrame) -> dict[str, object]:
        central = frame[(frame["phase"] == "central") & frame["client"].isna()]
        name = (
            "node_accuracy_mean"
            if (central["metric"] == "node_accuracy_mean").any()
            else "accuracy"
        )
        curve = central[central["metric"] == name].set_index("round")["value"].sort_index()
        spread = frame[
            (frame["phase"] == "central")
            & (frame["metric"] == "node_accuracy_std")
            & (frame["round"] == rounds)
        ]
        return {
            "curve": curve,
            "spread": float(spread["value"].iloc[0]) if len(spread) else float("nan"),
        }

    return extra


def rounds_cell(reached: pd.Series, rounds: int) -> str:
    """Mean ± std over the seeds that reached the target, and how many did.

    >>> rounds_cell(pd.Series([10.0, 12.0, float("nan")]), 30)
    '11.0 ± 1.4 (2/3 seeds)'
    >>> rounds_cell(pd.Series([float("nan")] * 2), 30)
    '> 30 (0/2 seeds)'
    """
    hits = reached.dropna()
    if not len(hits):
        return f"> {rounds} (0/{len(reached)} seeds)"
    return f"{mean_std(hits, digits=1, lone_std=True)} ({len(hits)}/{len(reached)} seeds)"


def results_table(runs: pd.DataFrame, rounds: int, targets: Sequence[float]) -> str:
    """One row per split × method."""

    def reaching(target: float) -> Cell:
        return lambda group: rounds_cell(group[f"rounds_to_{target:g}"], rounds)

    def spread(group: pd.DataFrame) -> str:
        if group["spread"].isna().any():
            return "— (one model)"
        return mean_std(group["spread"], lone_std=True)

    columns = {f"rounds to ≥ {t}": reaching(t) for t in targets}
    columns[f"accuracy after {rounds} rounds"] = lambda g: mean_std(g["final"], lone_std=True)
    columns[f"spread across nodes after {rounds} rounds"] = spread
    return grouped_markdown(runs, ["split", "method"], columns, labels={"method": LABELS})


def curves_table(runs: pd.DataFrame, rounds: int, every: int) -> str:
    """Mean node accuracy (mean over seeds) every ``every`` rounds, one row per split × method."""
    shown = [r for r in range(1, rounds + 1) if r == 1 or r % every == 0]

    def at(r: int) -> Cell:
        return lambda group: f"{pd.concat(list(group['curve']), axis=1).mean(axis=1)[r]:.2f}"

    return grouped_markdown(
        runs, ["split", "method"], {f"r{r}": at(r) for r in shown}, labels={"method": LABELS}
    )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argument_parser(
        __doc__.split("\n\n")[0],
        seeds=(1, 2, 3),
        runs=Path("runs/gossip"),
        doc=Path("runs/gossip/scaled-results.md"),
    )
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.6, 0.8])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    args = parser.parse_args(argv)
    seeds, rounds = parse_seeds(args.seeds), args.rounds
    configs = {  # run directory → (split label, method, scenario file, overrides)
        args.runs / f"{split}-{method}-s{seed}": (
            SPLITS[split][0],
            method,
            SPLITS[split][1],
            [f"seed={seed}", f"rounds={rounds}", *METHODS[method], *args.overrides],
        )
        for split in SPLITS
        if split in args.splits
        for method in args.methods
        for seed in seeds
    }
    if not args.table_only:
        # The server evaluates 50 node models every round in this process: one thread is
        # many times faster than torch's default on an oversubscribed machine.
        import torch

        torch.set_num_threads(1)
        jobs = [(c[2], c[3], d) for d, c in configs.items() if not done(d, rounds)]
        ran = run_scenarios(jobs)
        if ran is not None:
            ran.save(args.runs)
    labels = {d: {"split": c[0], "method": c[1]} for d, c in configs.items() if done(d, rounds)}
    runs = run_table(
        labels,
        ["node_accuracy_mean", "accuracy"],
        phase="central",
        rounds=(1, rounds),
        targets=args.targets,
        extra=node_extras(rounds),
    )
    results = results_table(runs, rounds, args.targets)
    curves = curves_table(runs, rounds, every=2)
    print(results, curves, sep="\n\n")
    if args.no_doc:
        return
    walls = runs["wall_s"]
    longer = int((runs["run_rounds"] > rounds).sum())
    wall = (
        f"{len(walls)} runs, {walls.sum() / 60:.1f} min in all "
        f"({walls.mean():.0f} s per run on average, {walls.min():.0f}–"
        f"{walls.max():.0f} s; Ray's start-up not included)"
    )
    if longer:
        wall += (
            f"; {longer} of them ran more rounds (their wall time included) and are read "
            f"up to round {rounds}"
        )
    last = Invocation.last(args.runs)
    if last is not None:
        minutes = last.wall_s / 60
        minutes = last.wall_s / 60
        wall += f"; the last invocation that ran any ran {last.ran} of them in {minutes:.1f} min"
    info = provenance(HERE)
    generated = GENERATED.format(
        results=results,
        curves=curves,
        command=command("scenarios/gossip/make_table.py", argv),
        wall=wall,
        rounds=rounds,
        seeds=", ".join(str(s) for s in seeds),
        **info,
    )
    write_page(args.doc, generated, splice_title=TITLE)
    print(f"wrote {args.doc}")


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
