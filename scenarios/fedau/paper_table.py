"""The tables and figure of docs/fedau-results.md, from the sweeps of paper_mnist1d.toml and
paper_mnist1d_participating.toml.

Reads every complete run under RUNS/main and RUNS/participating (and RUNS/lr_validation,
the validation-seed learning-rate sweep, when there); writes one row per run
(mean accuracy over the last 10 % of the rounds, final accuracy, wall time) and the FedAU
runs' ω against 1/p_n (per client) as CSV under --data, draws --figure (seed-mean accuracy
per pattern, and ω against 1/p_n) and prints the page's markdown: accuracy per method and
pattern, FedAU's paired per-seed differences, and how well ω tracks 1/p_n.

    python scenarios/fedau/paper_table.py /work/runs-papers/fedau \\
        --data docs/results-data/fedau --figure docs/figures/fedau-mnist1d.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fedsim.analysis import find_runs, has_runs, load_run, load_runs, omega_vs_probability

PATTERNS = ("bernoulli", "markov", "cyclic")
METHODS = (
    "FedAU",
    "FedAvg, participating",
    "FedAvg, all",
    "FedAvg, known p_n (oracle)",
    "MIFA",
    "FedVARP",
)


def method_of(name: str, rule: object) -> str:
    """The page's label of a strategy.

    >>> method_of("fedavg", "all"), method_of("fedau", float("nan"))
    ('FedAvg, all', 'FedAU')
    """
    if name == "fedavg":
        return {
            "all": "FedAvg, all",
            "participating": "FedAvg, participating",
            "known-probability": "FedAvg, known p_n (oracle)",
        }[str(rule)]
    return {"fedau": "FedAU", "mifa": "MIFA", "fedvarp": "FedVARP"}[name]


def run_rows(sweep: Path) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    frame = load_runs(find_runs(sweep))
    rows, curves = [], {}
    for run, group in frame.groupby("run"):
        central = group[(group["phase"] == "central") & group["client"].isna()]
        accuracy = central[central["metric"] == "accuracy"].set_index("round")["value"]
        accuracy = accuracy[accuracy.index >= 1].sort_index()
        last = int(accuracy.index[-1])
        rule = group["strategy.rule"].iloc[0] if "strategy.rule" in group else "participating"
        summary = json.loads((sweep / str(run) / "summary.json").read_text())
        path = str(sweep / str(run))
        rows.append(
            {
                "pattern": str(group["participation.pattern"].iloc[0]),
                "method": method_of(str(group["strategy.name"].iloc[0]), rule),
                "seed": int(group["seed"].iloc[0]),
                "acc_last10pct": 100 * float(accuracy[accuracy.index > 0.9 * last].mean()),
                "acc_final": 100 * float(accuracy.iloc[-1]),
                "acc_r200": 100 * float(accuracy.get(200, np.nan)),
                "acc_r500": 100 * float(accuracy.get(500, np.nan)),
                "rounds": last,
                "wall_s": float(summary["wall_time_s"]),
                "path": path,
            }
        )
        curves[path] = accuracy
    return pd.DataFrame(rows), curves


def ms(values: pd.Series) -> str:
    """'mean ± std' in points.

    >>> ms(pd.Series([90.0, 92.0]))
    '91.0 ± 1.4'
    """
    values = values.dropna()
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.1f} ± {std:.1f}" if len(values) else "—"


def accuracy_markdown(runs: pd.DataFrame, field: str) -> str:
    patterns = [p for p in PATTERNS if p in set(runs["pattern"])]
    lines = ["| method | " + " | ".join(patterns) + " |", "|---|" + "---|" * len(patterns)]
    for method in METHODS:
        cells = []
        for pattern in patterns:
            g = runs[(runs["method"] == method) & (runs["pattern"] == pattern)]
            cells.append(f"{ms(g[field])} ({len(g)})" if len(g) else "—")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_markdown(runs: pd.DataFrame, field: str = "acc_last10pct") -> str:
    others = METHODS[1:]
    lines = ["| pattern | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
    for pattern in [p for p in PATTERNS if p in set(runs["pattern"])]:
        by = runs[runs["pattern"] == pattern].set_index(["method", "seed"])[field]
        cells = []
        for other in others:
            if "FedAU" not in by.index.get_level_values(
                0
            ) or other not in by.index.get_level_values(0):
                cells.append("—")
                continue
            diff = (by["FedAU"] - by[other]).dropna()
            std = diff.std(ddof=1) if len(diff) > 1 else 0.0
            values = ", ".join(f"{d:+.1f}" for d in diff)
            cells.append(
                f"{diff.mean():+.1f} ± {std:.1f} [{values}] ({int((diff > 0).sum())}/{len(diff)})"
            )
        lines.append(f"| {pattern} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def omega_rows(runs: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for _, r in runs[runs["method"] == "FedAU"].iterrows():
        table = omega_vs_probability(r["path"])
        replies = load_run(r["path"]).participation.query("replied").groupby("client").size()
        table["replies"] = replies.reindex(table["client"]).fillna(0).to_numpy()
        parts.append(table.assign(pattern=r["pattern"], seed=r["seed"]))
    return pd.concat(parts, ignore_index=True)


def omega_markdown(omega: pd.DataFrame) -> str:
    lines = [
        "| pattern | seed | clients | Pearson r(ω, 1/p_n) | Spearman ρ | median ω·p_n | "
        "r, clients with ≥ 3 replies (count) |",
        "|---|---|---|---|---|---|---|",
    ]
    for pattern in PATTERNS:
        for seed, table in omega[omega["pattern"] == pattern].groupby("seed"):
            often = table[table["replies"] >= 3]
            often_r = (
                stats.pearsonr(often["omega"], often["inverse_p"]).statistic
                if len(often) > 2
                else float("nan")
            )
            lines.append(
                f"| {pattern} | {seed} | {len(table)} | "
                f"{stats.pearsonr(table['omega'], table['inverse_p']).statistic:.2f} | "
                f"{stats.spearmanr(table['omega'], table['inverse_p']).statistic:.2f} | "
                f"{np.median(table['omega'] * table['p_n']):.2f} | {often_r:.2f} ({len(often)}) |"
            )
    return "\n".join(lines)


def validation_markdown(sweep: Path) -> tuple[str, pd.DataFrame]:
    """lr_validation.toml's sweep: each method's last-10 % accuracy per local learning
    rate on the validation seed, the best in bold."""
    frame = load_runs(find_runs(sweep))
    rows = []
    for _, group in frame.groupby("run"):
        central = group[(group["phase"] == "central") & group["client"].isna()]
        accuracy = central[central["metric"] == "accuracy"].set_index("round")["value"]
        last = accuracy.index.max()
        rule = group["strategy.rule"].iloc[0] if "strategy.rule" in group else "participating"
        rows.append(
            {
                "method": method_of(str(group["strategy.name"].iloc[0]), rule),
                "lr": float(group["client.lr"].iloc[0]),
                "acc_last10pct": 100 * float(accuracy[accuracy.index > 0.9 * last].mean()),
                "rounds": int(last),
            }
        )
    table = pd.DataFrame(rows)
    rates = sorted(table["lr"].unique())
    lines = [
        "| method | " + " | ".join(f"lr {r:g}" for r in rates) + " | chosen |",
        "|---|" + "---|" * (len(rates) + 1),
    ]
    for method in METHODS:
        g = table[table["method"] == method].set_index("lr")["acc_last10pct"]
        if not len(g):
            continue
        best = g.idxmax()
        cells = [
            "—" if r not in g.index else (f"**{g[r]:.1f}**" if r == best else f"{g[r]:.1f}")
            for r in rates
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {best:g} |")
    return "\n".join(lines), table


def tuned_markdown(runs: pd.DataFrame, tuned: pd.DataFrame, chosen: pd.DataFrame) -> str:
    """Bernoulli at each method's validation-chosen local lr (its reference-rate runs
    where it kept that rate): last-10 % accuracy and FedAU's paired difference."""
    best = chosen.loc[chosen.groupby("method")["acc_last10pct"].idxmax()].set_index("method")
    reference = runs[runs["pattern"] == "bernoulli"]
    picked = []
    for method in METHODS:
        if method not in best.index:
            continue
        lr = float(best.loc[method, "lr"])
        mine = tuned[tuned["method"] == method] if len(tuned) else tuned
        source = mine if len(mine) else reference[reference["method"] == method]
        picked.append(source.assign(method=method, lr=lr))
    table = pd.concat(picked, ignore_index=True)
    by = table.set_index(["method", "seed"])["acc_last10pct"]
    lines = [
        "| method | chosen local lr | last-10 % accuracy (%) | FedAU − method, per seed |",
        "|---|---|---|---|",
    ]
    for method, g in table.groupby("method", sort=False):
        if method == "FedAU" or "FedAU" not in by.index.get_level_values(0):
            diff_text = "—"
        else:
            diff = (by["FedAU"] - by[method]).dropna()
            std = diff.std(ddof=1) if len(diff) > 1 else 0.0
            values = ", ".join(f"{d:+.1f}" for d in diff)
            diff_text = (
                f"{diff.mean():+.1f} ± {std:.1f} [{values}] ({int((diff > 0).sum())}/{len(diff)})"
            )
        lines.append(
            f"| {method} | {g['lr'].iloc[0]:g} | {ms(g['acc_last10pct'])} ({len(g)}) | "
            f"{diff_text} |"
        )
    return "\n".join(lines)


def figure(
    runs: pd.DataFrame, curves: dict[str, pd.Series], omega: pd.DataFrame, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), dpi=72)
    for ax, pattern in zip(axes[:3], PATTERNS, strict=True):
        for method, colour in zip(METHODS, ("C3", "C0", "C1", "k", "C2", "C4"), strict=True):
            paths = runs[(runs["pattern"] == pattern) & (runs["method"] == method)]["path"]
            if len(paths):
                mean = pd.concat([curves[p] for p in paths], axis=1).mean(axis=1)
                smooth = mean.rolling(10, min_periods=1).mean()
                ax.plot(smooth.index, 100 * smooth.values, color=colour, linewidth=1, label=method)
        ax.set_title(f"{pattern}: test accuracy (%)")
        ax.set_xlabel("round")
        ax.set_ylim(50, 95)
    axes[0].legend(fontsize=6)
    for pattern, marker in zip(PATTERNS, ("o", "s", "^"), strict=True):
        sel = omega[omega["pattern"] == pattern]
        axes[3].scatter(
            sel["inverse_p"], sel["omega"], s=6, marker=marker, alpha=0.5, label=pattern
        )
    top = float(omega["inverse_p"].max())
    axes[3].plot([1, top], [1, top], color="grey", linewidth=0.5)
    axes[3].set_xscale("log")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("1 / p_n")
    axes[3].set_ylabel("last ω_n")
    axes[3].set_title("FedAU's ω against 1/p_n, all seeds")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="folder holding main/ and participating/")
    parser.add_argument("--data", type=Path, help="write runs.csv and omega.csv here")
    parser.add_argument("--figure", type=Path, help="write the PNG here")
    args = parser.parse_args()
    parts, curves = [], {}
    for name in ("main", "participating"):
        if (args.runs / name).is_dir() and has_runs(args.runs / name):
            rows, more = run_rows(args.runs / name)
            parts.append(rows)
            curves.update(more)
    runs = pd.concat(parts, ignore_index=True)
    omega = omega_rows(runs)
    print(
        "last 10 % of the rounds, mean accuracy (%):\n" + accuracy_markdown(runs, "acc_last10pct")
    )
    print("\nfinal accuracy (%):\n" + accuracy_markdown(runs, "acc_final"))
    print("\nat round 200 (%):\n" + accuracy_markdown(runs, "acc_r200"))
    print("\nFedAU minus each method, last 10 %, per seed:\n" + paired_markdown(runs))
    print(
        "\nFedAU minus each method, at round 200, per seed:\n" + paired_markdown(runs, "acc_r200")
    )
    print("\nω:\n" + omega_markdown(omega))
    print(f"\n{len(runs)} runs, {runs['wall_s'].sum() / 60:.1f} min of run wall time in all")
    validation = args.runs / "lr_validation"
    chosen = None
    if validation.is_dir() and has_runs(validation):
        text, chosen = validation_markdown(validation)
        print("\nvalidation seed:\n" + text)
        tuned_dirs = (
            sorted((args.runs / "tuned").glob("*")) if (args.runs / "tuned").is_dir() else []
        )
        tuned_parts = [run_rows(d)[0] for d in tuned_dirs if has_runs(d)]
        tuned = pd.concat(tuned_parts, ignore_index=True) if tuned_parts else pd.DataFrame()
        print("\ntuned, bernoulli:\n" + tuned_markdown(runs, tuned, chosen))
    if args.data:
        args.data.mkdir(parents=True, exist_ok=True)
        runs.drop(columns="path").round(3).to_csv(args.data / "runs.csv", index=False)
        omega.round(4).to_csv(args.data / "omega.csv", index=False)
        if chosen is not None:
            chosen.round(3).to_csv(args.data / "lr_validation.csv", index=False)
        means = {}
        for (pattern, method), g in runs.groupby(["pattern", "method"]):
            mean = pd.concat([curves[p] for p in g["path"]], axis=1).mean(axis=1)
            means[f"{pattern}/{method}"] = mean
        pd.DataFrame(means).round(4).rename_axis("round").to_csv(args.data / "curves.csv")
    if args.figure:
        figure(runs, curves, omega, args.figure)


if __name__ == "__main__":
    main()
