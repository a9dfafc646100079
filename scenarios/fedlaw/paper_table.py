"""The tables and figure of docs/fedlaw-results.md, from the sweeps of reference.toml and
hard_100.toml.

Reads every complete run under RUNS/reference and RUNS/hard_100; re-evaluates each final
model on the common test set of its seed (the test split minus the proxy set, which FedLAW
and the proxy-tuned FedAvg are evaluated on; FedAvg on the whole split); writes one row per
run and the seed-mean γ and λ-entropy curves as CSV under --data, draws --figure and prints
the page's markdown. λ entropy is H(λ)/log K over the K clients aggregated in the round
(1: uniform weights; FedLAW starts every round at λ = p, the example shares, whose
entropy, mean over rounds, is the "p entropy" column).

    python scenarios/fedlaw/paper_table.py /work/runs-papers/fedlaw \\
        --data docs/results-data/fedlaw --figure docs/figures/fedlaw-gamma.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.analysis import find_runs, has_runs, load_runs
from fedsim.paper_tables import evaluate_final_model

SETUPS = {"reference": "20 clients, all", "hard_100": "100 clients, 10 %"}
METHODS = {
    "fedavg": "FedAvg",
    "fedavg_proxy.py:FedAvgProxy": "FedAvg + proxy fine-tuning",
    "fedlaw": "FedLAW",
}
SHOWN_ROUNDS = (1, 10, 50, 100, 200)


def entropy_curve(server: pd.DataFrame) -> pd.Series:
    """Per round, H(λ)/log K of the λ rows (K ≥ 2 clients).

    >>> rows = pd.DataFrame({"round": [1, 1], "value": [0.5, 0.5]})
    >>> float(entropy_curve(rows).iloc[0])
    1.0
    """

    def normalised(values: pd.Series) -> float:
        lam = values.to_numpy(dtype=float)
        lam = lam[lam > 0]
        return float(-(lam * np.log(lam)).sum() / np.log(len(values))) if len(values) > 1 else 1.0

    return server.groupby("round")["value"].apply(normalised)


def run_rows(sweep: Path, setup: str) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    frame = load_runs(find_runs(sweep))
    rows, curves = [], {}
    for run, group in frame.groupby("run"):
        method = str(group["strategy.name"].iloc[0])
        dataset = str(group["data.dataset"].iloc[0])
        central = group[(group["phase"] == "central") & group["client"].isna()]
        accuracy = central[central["metric"] == "accuracy"].set_index("round")["value"]
        accuracy = accuracy[accuracy.index >= 1].sort_index()
        last = accuracy.index[-1]
        gamma = group[(group["metric"] == "gamma") & group["client"].isna()]
        gamma = gamma.set_index("round")["value"].sort_index()
        lam = group[(group["phase"] == "server") & (group["metric"] == "lambda")]
        entropy = entropy_curve(lam) if len(lam) else pd.Series(dtype=float)
        counts = group[(group["phase"] == "train") & (group["metric"] == "num-examples")]
        counts = counts[counts["client"].notna()]
        shares = counts.assign(
            value=counts["value"] / counts.groupby("round")["value"].transform("sum")
        )
        p_entropy = entropy_curve(shares)
        summary = json.loads((sweep / str(run) / "summary.json").read_text())
        rows.append(
            {
                "setup": setup,
                "dataset": dataset,
                "method": method,
                "seed": int(group["seed"].iloc[0]),
                "acc_final": float(accuracy.iloc[-1]),
                "acc_last10pct": float(accuracy[accuracy.index > 0.9 * last].mean()),
                "acc_best": float(accuracy.max()),
                "acc_r20": float(accuracy.get(20, np.nan)),
                "gamma_end": float(gamma.iloc[-1]) if len(gamma) else np.nan,
                "gamma_mean": float(gamma.mean()) if len(gamma) else np.nan,
                "gamma_min": float(gamma.min()) if len(gamma) else np.nan,
                "gamma_share_below_1": float((gamma < 1).mean()) if len(gamma) else np.nan,
                "entropy_end": float(entropy.iloc[-1]) if len(entropy) else np.nan,
                "entropy_mean": float(entropy.mean()) if len(entropy) else np.nan,
                "p_entropy_mean": float(p_entropy.mean()),
                "rounds": int(last),
                "wall_s": float(summary["wall_time_s"]),
                "path": str(sweep / str(run)),
            }
        )
        curves[str(sweep / str(run))] = pd.DataFrame(
            {"accuracy": accuracy, "gamma": gamma, "entropy": entropy}
        )
    return pd.DataFrame(rows), curves


def common_accuracy(runs: pd.DataFrame) -> pd.Series:
    """Each final model on FedLAW's test set of the same setup, dataset and seed."""
    key = ["setup", "dataset", "seed"]
    fedlaw = runs[runs["method"] == "fedlaw"].set_index(key)["path"]
    values = []
    for _, r in runs.iterrows():
        k = (r["setup"], r["dataset"], r["seed"])
        values.append(
            evaluate_final_model(Path(r["path"]), Path(fedlaw[k])) if k in fedlaw.index else np.nan
        )
    return pd.Series(values, index=runs.index, dtype=float)


def ms(values: pd.Series, digits: int = 3) -> str:
    """'mean ± std' over seeds.

    >>> ms(pd.Series([0.5, 0.7]))
    '0.600 ± 0.141'
    """
    values = values.dropna()
    if not len(values):
        return "—"
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def results_markdown(runs: pd.DataFrame) -> str:
    head = (
        "| setup | data | method | seeds | final acc | last-10 % mean | best | final acc, common "
        "test set | γ end | γ mean | share of rounds γ < 1 | λ entropy end | p entropy | "
        "wall s/run |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (setup, dataset), group in runs.groupby(["setup", "dataset"], sort=False):
        for method in METHODS:
            g = group[group["method"] == method]
            if not len(g):
                continue
            lines.append(
                f"| {SETUPS[setup]} | {dataset} | {METHODS[method]} | {len(g)} | "
                f"{ms(g['acc_final'])} | {ms(g['acc_last10pct'])} | {ms(g['acc_best'])} | "
                f"{ms(g['acc_common'])} | {ms(g['gamma_end'])} | {ms(g['gamma_mean'])} | "
                f"{ms(g['gamma_share_below_1'], 2)} | {ms(g['entropy_end'])} | "
                f"{ms(g['p_entropy_mean'])} | "
                f"{g['wall_s'].mean():.0f} |"
            )
    return "\n".join(lines)


def paired_markdown(runs: pd.DataFrame) -> str:
    pairs = [
        ("fedlaw", "fedavg"),
        ("fedlaw", "fedavg_proxy.py:FedAvgProxy"),
        ("fedavg_proxy.py:FedAvgProxy", "fedavg"),
    ]
    head = "| setup | data | " + " | ".join(f"{METHODS[a]} − {METHODS[b]}" for a, b in pairs) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (setup, dataset), group in runs.groupby(["setup", "dataset"], sort=False):
        by = group.set_index(["method", "seed"])["acc_common"]
        cells = []
        for a, b in pairs:
            if a not in by.index.get_level_values(0) or b not in by.index.get_level_values(0):
                cells.append("—")
                continue
            diff = (by[a] - by[b]).dropna()
            std = diff.std(ddof=1) if len(diff) > 1 else 0.0
            cells.append(
                f"{100 * diff.mean():+.1f} ± {100 * std:.1f} pts "
                f"({int((diff > 0).sum())}/{len(diff)})"
            )
        lines.append(f"| {SETUPS[setup]} | {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def trajectory_markdown(runs: pd.DataFrame, curves: dict[str, pd.DataFrame], column: str) -> str:
    head = "| setup | data | " + " | ".join(f"round {r}" for r in SHOWN_ROUNDS) + " | min |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fedlaw = runs[runs["method"] == "fedlaw"]
    for (setup, dataset), group in fedlaw.groupby(["setup", "dataset"], sort=False):
        table = pd.concat([curves[p][column] for p in group["path"]], axis=1)
        cells = [ms(table.loc[r]) if r in table.index else "—" for r in SHOWN_ROUNDS]
        lines.append(
            f"| {SETUPS[setup]} | {dataset} | " + " | ".join(cells) + f" | {ms(table.min())} |"
        )
    return "\n".join(lines)


def figure(runs: pd.DataFrame, curves: dict[str, pd.DataFrame], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=80)
    groups = list(runs.groupby(["setup", "dataset"], sort=False))
    for (key, group), colour in zip(groups, ("C0", "C1", "C2", "C3"), strict=False):
        label = f"{SETUPS[key[0]]}, {key[1]}"
        fedlaw = group[group["method"] == "fedlaw"]["path"]
        for ax, column in zip(axes[:2], ("gamma", "entropy"), strict=True):
            mean = pd.concat([curves[p][column] for p in fedlaw], axis=1).mean(axis=1)
            ax.plot(mean.index, mean.values, color=colour, label=label, linewidth=1)
        for method, style in (
            ("fedavg", ":"),
            ("fedavg_proxy.py:FedAvgProxy", "--"),
            ("fedlaw", "-"),
        ):
            paths = group[group["method"] == method]["path"]
            if len(paths):
                mean = pd.concat([curves[p]["accuracy"] for p in paths], axis=1).mean(axis=1)
                axes[2].plot(
                    mean.index,
                    mean.values,
                    style,
                    color=colour,
                    linewidth=1,
                    label=f"{label}: {METHODS[method]}",
                )
    axes[0].axhline(1.0, color="grey", linewidth=0.5)
    axes[0].set_title("FedLAW's γ (mean over seeds)")
    axes[1].set_title("FedLAW's λ entropy, H(λ)/log K")
    axes[2].set_title("central test accuracy")
    for ax in axes:
        ax.set_xlabel("round")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="folder holding reference/ and hard_100/")
    parser.add_argument("--data", type=Path, help="write runs.csv and curves.csv here")
    parser.add_argument("--figure", type=Path, help="write the PNG here")
    args = parser.parse_args()
    parts, curves = [], {}
    for setup in SETUPS:
        if (args.runs / setup).is_dir() and has_runs(args.runs / setup):
            rows, more = run_rows(args.runs / setup, setup)
            parts.append(rows)
            curves.update(more)
    runs = pd.concat(parts, ignore_index=True)
    runs["acc_common"] = common_accuracy(runs)
    print(results_markdown(runs), paired_markdown(runs), sep="\n\n")
    print("\nγ:\n" + trajectory_markdown(runs, curves, "gamma"))
    print("\nλ entropy:\n" + trajectory_markdown(runs, curves, "entropy"))
    print(f"\n{len(runs)} runs, {runs['wall_s'].sum() / 60:.1f} min of run wall time in all")
    if args.data:
        args.data.mkdir(parents=True, exist_ok=True)
        runs.drop(columns="path").round(4).to_csv(args.data / "runs.csv", index=False)
        means = {}
        for (setup, dataset, method), g in runs.groupby(["setup", "dataset", "method"]):
            table = pd.concat([curves[p] for p in g["path"]], axis=1, keys=range(len(g)))
            for column in ("accuracy", "gamma", "entropy"):
                series = table.xs(column, axis=1, level=1).mean(axis=1)
                if series.notna().any():
                    means[f"{setup}/{dataset}/{METHODS[method]}/{column}"] = series
        pd.DataFrame(means).round(4).rename_axis("round").to_csv(args.data / "curves.csv")
    if args.figure:
        figure(runs, curves, args.figure)


if __name__ == "__main__":
    main()
