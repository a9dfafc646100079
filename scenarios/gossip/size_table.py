"""The network-size tables and figure of docs/gossip-results.md, from the sweeps of
size_rr8.toml, size_ring.toml and size_rr8_1step.toml.

Reads every complete run under RUNS/size_rr8, RUNS/size_ring and RUNS/size_rr8_1step,
writes one row per run (round-1 variance ratio, rounds to each target accuracy,
accuracies, wall time) and the seed-mean accuracy curves as CSV under --data, draws
--figure, and prints the page's markdown tables. Accuracy is the mean over the nodes of
each node's own model on the held-out test set (``node_accuracy_mean``); for FedAvg the
global model's ``accuracy``.

    python scenarios/gossip/size_table.py /work/runs-papers/gossip \\
        --data docs/results-data/gossip --figure docs/figures/gossip-size.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.analysis import find_runs, has_runs, load_runs

TARGETS = (0.6, 0.8, 0.9)
METHODS = {
    "gossip": "plain gossip",
    "gossip-vc": "variance-corrected gossip",
    "dpsgd": "D-PSGD",
    "fedavg": "FedAvg",
}
TOPOLOGIES = {
    "size_rr8": "random regular, degree 8",
    "size_ring": "ring",
    "size_rr8_1step": "random regular, degree 8, 1 local step",
}


def first_reach(curve: pd.Series, target: float) -> float:
    """The first round whose value is at least ``target`` (NaN if none).

    >>> first_reach(pd.Series([0.1, 0.7, 0.9], index=[1, 2, 3]), 0.8)
    3.0
    """
    hits = curve[curve >= target]
    return float(hits.index[0]) if len(hits) else float("nan")


def run_rows(sweep: Path, topology: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per complete run of one sweep directory."""
    frame = load_runs(find_runs(sweep))
    rows = []
    for run, group in frame.groupby("run"):
        central = group[(group["phase"] == "central") & group["client"].isna()]
        method = str(group["strategy.name"].iloc[0])
        metric = "accuracy" if method == "fedavg" else "node_accuracy_mean"
        curve = central[central["metric"] == metric].set_index("round")["value"].sort_index()
        curve = curve[curve.index >= 1]
        train = group[(group["phase"] == "train") & group["client"].isna()]
        ratio = train[(train["metric"] == "variance_ratio") & (train["round"] == 1)]["value"]
        spread = central[central["metric"] == "node_accuracy_std"].set_index("round")["value"]
        summary = json.loads((sweep / str(run) / "summary.json").read_text())
        row = {
            "topology": topology,
            "nodes": int(group["data.num_clients"].iloc[0]),
            "method": method,
            "seed": int(group["seed"].iloc[0]),
            "variance_ratio_r1": float(ratio.iloc[0]) if len(ratio) else float("nan"),
            **{f"rounds_to_{t:g}": first_reach(curve, t) for t in TARGETS},
            "acc_r5": float(curve.get(5, np.nan)),
            "acc_r10": float(curve.get(10, np.nan)),
            "acc_r20": float(curve.get(20, np.nan)),
            "acc_final": float(curve.iloc[-1]),
            "acc_best": float(curve.max()),
            "spread_final": float(spread.iloc[-1]) if len(spread) else float("nan"),
            "rounds": int(curve.index[-1]),
            "wall_s": float(summary["wall_time_s"]),
        }
        rows.append((row, curve.rename(run)))
    runs = pd.DataFrame([r for r, _ in rows])
    curves = pd.concat([c for _, c in rows], axis=1) if rows else pd.DataFrame()
    runs["run"] = [c.name for _, c in rows]
    return runs, curves


def mean_std(values: pd.Series, digits: int = 1) -> str:
    """'m ± s (k/n)' over the non-missing values; '> R (0/n)'-style text is the caller's.

    >>> mean_std(pd.Series([2.0, 4.0, float("nan")]))
    '3.0 ± 1.4 (2/3)'
    """
    hits = values.dropna()
    if not len(hits):
        return f"— (0/{len(values)})"
    std = hits.std(ddof=1) if len(hits) > 1 else 0.0
    return f"{hits.mean():.{digits}f} ± {std:.{digits}f} ({len(hits)}/{len(values)})"


def speedups(runs: pd.DataFrame) -> pd.DataFrame:
    """Per topology × size × seed: plain over corrected rounds to each target (paired by seed;
    a target plain gossip never reached counts as its horizon, a lower bound, marked)."""
    rows = []
    for (topology, nodes, seed), group in runs.groupby(["topology", "nodes", "seed"], sort=False):
        by = group.set_index("method")
        if not {"gossip", "gossip-vc"} <= set(by.index):
            continue
        row = {"topology": topology, "nodes": nodes, "seed": seed}
        for t in TARGETS:
            plain, vc = (
                by.loc["gossip", f"rounds_to_{t:g}"],
                by.loc["gossip-vc", f"rounds_to_{t:g}"],
            )
            censored = np.isnan(plain)
            plain = by.loc["gossip", "rounds"] if censored else plain
            row[f"speedup_{t:g}"] = plain / vc if not np.isnan(vc) else float("nan")
            row[f"censored_{t:g}"] = bool(censored)
        ratio = by.loc["gossip-vc", "variance_ratio_r1"] / by.loc["gossip", "variance_ratio_r1"]
        row["variance_ratio_vc_over_plain_r1"] = ratio
        rows.append(row)
    return pd.DataFrame(rows)


def equal_accuracy_speedups(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Per topology × size × seed: the round plain gossip first reaches its own final
    accuracy over the round the corrected gossip first reaches it (no censoring: every
    plain run reaches its own final accuracy)."""
    rows = []
    for (topology, nodes, seed), group in runs.groupby(["topology", "nodes", "seed"], sort=False):
        by = group.set_index("method")["run"]
        if not {"gossip", "gossip-vc"} <= set(by.index):
            continue
        plain, vc = curves[by["gossip"]].dropna(), curves[by["gossip-vc"]].dropna()
        level = float(plain.iloc[-1])
        rows.append(
            {
                "topology": topology,
                "nodes": nodes,
                "seed": seed,
                "level": level,
                "plain_round": first_reach(plain, level),
                "corrected_round": first_reach(vc, level),
            }
        )
    frame = pd.DataFrame(rows)
    frame["speedup"] = frame["plain_round"] / frame["corrected_round"]
    return frame


def equal_accuracy_markdown(equal: pd.DataFrame) -> str:
    lines = [
        "| graph | nodes | plain gossip's final accuracy | its round | corrected gossip's round "
        "| speed-up (per seed) | mean ± std |",
        "|---|---|---|---|---|---|---|",
    ]
    for (topology, nodes), g in equal.groupby(["topology", "nodes"], sort=False):
        values = ", ".join(f"{v:.1f}" for v in g["speedup"])
        lines.append(
            f"| {TOPOLOGIES[topology]} | {nodes} | {g['level'].mean():.3f} | "
            f"{g['plain_round'].mean():.0f} | {g['corrected_round'].mean():.0f} | {values} | "
            f"{mean_std(g['speedup']).split(' (')[0]} |"
        )
    return "\n".join(lines)


def results_markdown(runs: pd.DataFrame) -> str:
    head = (
        "| graph | nodes | method | round-1 variance ratio | "
        + " | ".join(f"rounds to ≥ {t}" for t in TARGETS)
        + " | acc. r10 | final acc. | final node spread |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    order = {m: i for i, m in enumerate(METHODS)}
    for (topology, nodes), group in runs.groupby(["topology", "nodes"], sort=False):
        for method, g in sorted(group.groupby("method"), key=lambda kv: order[kv[0]]):
            ratio = "—" if method == "fedavg" else f"{g['variance_ratio_r1'].mean():.3f}"
            spread = "—" if method == "fedavg" else f"{g['spread_final'].mean():.3f}"
            lines.append(
                f"| {TOPOLOGIES[topology]} | {nodes} | {METHODS[method]} | {ratio} | "
                + " | ".join(mean_std(g[f"rounds_to_{t:g}"]) for t in TARGETS)
                + f" | {mean_std(g['acc_r10'], 3).split(' (')[0]}"
                + f" | {mean_std(g['acc_final'], 3).split(' (')[0]} | {spread} |"
            )
    return "\n".join(lines)


def speedup_markdown(speed: pd.DataFrame) -> str:
    head = (
        "| graph | nodes | "
        + " | ".join(f"speed-up to ≥ {t} (per seed)" for t in TARGETS)
        + " | mean |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (topology, nodes), g in speed.groupby(["topology", "nodes"], sort=False):
        cells = []
        for t in TARGETS:
            values = [
                f"{v:.1f}" + ("+" if c else "") if not np.isnan(v) else "—"
                for v, c in zip(g[f"speedup_{t:g}"], g[f"censored_{t:g}"], strict=True)
            ]
            cells.append(", ".join(values))
        mean = g[[f"speedup_{t:g}" for t in TARGETS]].mean().round(1).tolist()
        lines.append(
            f"| {TOPOLOGIES[topology]} | {nodes} | "
            + " | ".join(cells)
            + f" | {' / '.join(f'{m:.1f}' for m in mean)} |"
        )
    return "\n".join(lines)


def figure(runs: pd.DataFrame, equal: pd.DataFrame, curves: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), dpi=72)
    for topology, marker in (("size_rr8", "o"), ("size_ring", "s"), ("size_rr8_1step", "^")):
        g = equal[equal["topology"] == topology]
        if len(g):
            m = g.groupby("nodes")["speedup"].agg(["mean", "std"])
            axes[0].errorbar(
                m.index,
                m["mean"],
                yerr=m["std"],
                marker=marker,
                label=TOPOLOGIES[topology],
                capsize=3,
            )
    axes[0].set_xlabel("nodes")
    axes[0].set_ylabel("rounds(plain) / rounds(corrected)")
    axes[0].set_title("speed-up at plain gossip's final accuracy")
    axes[0].legend(fontsize=7)
    axes[0].set_xticks([50, 100, 200])
    for ax, topology in zip(axes[1:], TOPOLOGIES, strict=True):
        for method, colour in zip(METHODS, ("C3", "C0", "C2", "k"), strict=True):
            for nodes, style in ((50, ":"), (200, "-")):
                sel = runs[
                    (
                        runs["topology"].isin(
                            ["size_rr8"]
                            if method == "fedavg" and topology == "size_ring"
                            else [topology]
                        )
                    )
                    & (runs["method"] == method)
                    & (runs["nodes"] == nodes)
                ]
                if not len(sel):
                    continue
                mean = curves[sel["run"]].mean(axis=1)
                ax.plot(
                    mean.index,
                    mean.values,
                    style,
                    color=colour,
                    label=f"{METHODS[method]}, {nodes}",
                )
        ax.set_title(f"{TOPOLOGIES[topology]}: mean node accuracy", fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="folder holding the sweeps (size_rr8/, ...)")
    parser.add_argument("--data", type=Path, help="write runs.csv, speedups.csv, curves.csv here")
    parser.add_argument("--figure", type=Path, help="write the PNG here")
    args = parser.parse_args()
    parts, curve_parts = [], []
    for name in TOPOLOGIES:
        if (args.runs / name).is_dir() and has_runs(args.runs / name):
            runs, curves = run_rows(args.runs / name, name)
            curves.columns = [f"{name}/{c}" for c in curves.columns]
            runs["run"] = [f"{name}/{r}" for r in runs["run"]]
            parts.append(runs)
            curve_parts.append(curves)
    runs = pd.concat(parts, ignore_index=True)
    order = runs["topology"].map(list(TOPOLOGIES).index)
    runs = runs.assign(_order=order).sort_values(["_order", "nodes", "method", "seed"])
    runs = runs.drop(columns="_order").reset_index(drop=True)
    curves = pd.concat(curve_parts, axis=1)
    speed = speedups(runs)
    equal = equal_accuracy_speedups(runs, curves)
    print(
        results_markdown(runs), speedup_markdown(speed), equal_accuracy_markdown(equal), sep="\n\n"
    )
    print(f"\n{len(runs)} runs, {runs['wall_s'].sum() / 60:.1f} min of run wall time in all")
    if args.data:
        args.data.mkdir(parents=True, exist_ok=True)
        runs.drop(columns="run").round(4).to_csv(args.data / "runs.csv", index=False)
        speed.round(3).to_csv(args.data / "speedups.csv", index=False)
        equal.round(4).to_csv(args.data / "equal_accuracy_speedups.csv", index=False)
        keyed = runs.set_index("run")
        mean_curves = {}
        for (topology, nodes, method), g in keyed.groupby(["topology", "nodes", "method"]):
            mean_curves[f"{topology}/{nodes}/{method}"] = curves[list(g.index)].mean(axis=1)
        pd.DataFrame(mean_curves).round(4).rename_axis("round").to_csv(args.data / "curves.csv")
    if args.figure:
        figure(runs, equal, curves, args.figure)


if __name__ == "__main__":
    main()
