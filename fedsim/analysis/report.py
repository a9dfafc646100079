"""Reports: the figures and tables a researcher looks at after a run or a sweep.

``fedsim report DIR`` turns a run or a sweep directory into PNG figures and a
summary table, so the first look at results needs no notebook: the metric per
round for every configuration (mean and a ±1 std band over seeds), who took
part in each round, and the diagnostics of the strategies that record them —
FedAU's ω against 1/p_n (Wang & Ji, ICLR 2024, https://arxiv.org/abs/2306.03401),
FedLAW's global shrinking factor γ (Li et al., ICML 2023,
https://arxiv.org/abs/2302.10911) and the consensus distance of gossip
averaging — and, for runs with differential privacy, the final metric against
ε (a privacy-utility curve over a sweep of noise multipliers). The summary
(final and best value, rounds to a target, ε, mean ± std over seeds) is
written as markdown and CSV.

Every ``plot_*`` function draws on a matplotlib ``Axes`` the caller owns, so
notebooks reuse them; the ``*_figure`` functions wrap them in a figure drawn on
the Agg canvas directly (no pyplot, no global backend).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from fedsim import keys
from fedsim.analysis import (
    configuration_label,
    curve,
    find_runs,
    grid_order,
    has_simulated_time,
    higher_is_better,
    load_run,
    load_runs,
    omega_vs_probability,
    participation_matrix,
    run_results,
    summary_table,
    sweep_manifest,
    varying_keys,
)
from fedsim.analysis.clients import (
    CLIENT_METRIC,
    client_distribution,
    client_table,
    fairness_summary,
)
from fedsim.analysis.runs import Run
from fedsim.errors import FedsimError
from fedsim.outputs import output_directory

DPI = 120
MAX_PANELS = 9
PARTICIPATION_STATES = ("unreachable", "reachable", "selected, no reply", "replied")
PARTICIPATION_COLOURS = ("#f2f2f2", "#bdd7e7", "#fd8d3c", "#08519c")
DIAGNOSTICS = {
    # file stem: (metric, phase, y label, log scale)
    "fedlaw_gamma": ("gamma", keys.PHASE_TRAIN, "FedLAW global shrinking factor γ", False),
    "gossip_consensus": (
        "consensus_distance",
        keys.PHASE_TRAIN,
        "consensus distance (mean ‖x_i − x̄‖)",
        True,
    ),
}


# --- drawing on an Axes ---------------------------------------------------------------------


def plot_curves(
    ax: Axes,
    curves: pd.DataFrame,
    by: Sequence[str],
    *,
    label: str = "",
    log: bool = False,
    hours: bool = False,
) -> None:
    """One line (the mean) and a band (± std over seeds) per configuration of ``curves``.

    ``curves`` is :func:`fedsim.analysis.curve`'s frame; ``by`` its configuration keys.
    ``hours``: against simulated hours (its ``time_s`` column) instead of rounds.
    """
    x_column = "time_s" if hours else "round"
    groups = curves.groupby(list(by), dropna=False, sort=False) if by else [((), curves)]
    for key, group in groups:
        values = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        name = configuration_label(values) or label or "run"
        runs = int(group["runs"].max())
        x = group[x_column] / 3600.0 if hours else group[x_column]
        (line,) = ax.plot(x, group["mean"], label=f"{name} (n={runs})", lw=1.6)
        if runs > 1:
            low, high = group["mean"] - group["std"], group["mean"] + group["std"]
            if log:
                low = low.clip(lower=group["min"].clip(lower=1e-12))
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, lw=0)
    if hours:
        ax.set_xlabel("simulated time (hours)")
    else:
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def participation_codes(run_dir: str | Path) -> np.ndarray:
    """A run's clients × rounds participation as codes: 0 unreachable, 1 reachable,
    2 selected without a reply (failed, dropped, late), 3 replied."""
    run = load_run(run_dir)
    states = [participation_matrix(run, s).to_numpy() for s in ("available", "selected")]
    replied = participation_matrix(run, "replied").to_numpy()
    return (states[0].astype(int) + states[1] + replied).astype(np.int64)


def plot_participation(ax: Axes, codes: np.ndarray, *, title: str = "") -> None:
    """Heatmap of :func:`participation_codes`: rounds across, clients down."""
    num_clients, num_rounds = codes.shape
    ax.imshow(
        codes,
        aspect="auto",
        interpolation="nearest",
        cmap=ListedColormap(PARTICIPATION_COLOURS),
        vmin=-0.5,
        vmax=3.5,
        extent=(0.5, num_rounds + 0.5, num_clients - 0.5, -0.5),
    )
    ax.set_xlabel("round")
    ax.set_ylabel("client")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    replied = (codes == 3).mean() if codes.size else 0.0
    ax.set_title(f"{title}\n{replied:.0%} of client-rounds replied".strip(), fontsize=9)


def participation_legend() -> list[Patch]:
    """Legend handles for :func:`plot_participation`."""
    return [
        Patch(facecolor=c, edgecolor="grey", label=s)
        for s, c in zip(PARTICIPATION_STATES, PARTICIPATION_COLOURS, strict=True)
    ]


def plot_omega(ax: Axes, table: pd.DataFrame, *, title: str = "") -> None:
    """FedAU's ω_n against 1/p_n (``omega_vs_probability``) with the diagonal ω = 1/p."""
    known = table.dropna(subset=["inverse_p"])
    if known.empty:
        ax.text(0.5, 0.5, "no p_n for this pattern", ha="center", va="center")
    else:
        ax.scatter(known["inverse_p"], known["omega"], s=18, alpha=0.8, label="client")
        top = float(max(known["inverse_p"].max(), known["omega"].max())) * 1.05
        ax.plot([0, top], [0, top], color="grey", ls="--", lw=1, label="ω = 1/p")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel("1 / p_n (true mean interval between participations)")
    ax.set_ylabel("ω_n (FedAU's estimate, last round)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


# --- figures -------------------------------------------------------------------------------


def new_figure(panels: int = 1, *, width: float = 8.0, height: float = 5.0) -> Figure:
    """A figure on the Agg canvas with ``panels`` axes (``width`` × ``height`` inches each
    when alone, narrower side by side) in a grid of up to 3 columns."""
    columns = min(3, max(1, panels))
    rows = math.ceil(max(1, panels) / columns)
    panel_width = width if columns == 1 else min(width, 5.5)
    figure = Figure(figsize=(panel_width * columns, height * rows))
    FigureCanvasAgg(figure)
    figure.set_layout_engine("constrained")
    figure.subplots(rows, columns, squeeze=False)
    for ax in figure.axes[panels:]:
        ax.set_visible(False)
    return figure


def curves_figure(
    frame: pd.DataFrame,
    metric: str,
    *,
    by: Sequence[str] | None = None,
    phase: str | None = None,
    ylabel: str | None = None,
    log: bool = False,
    hours: bool = False,
) -> Figure:
    """``metric`` per round (or against simulated hours), one line and ± std band per
    configuration of ``frame``."""
    by = varying_keys(frame) if by is None else list(by)
    curves = curve(frame, metric, by=by, phase=phase)
    if hours:
        curves = curves.dropna(subset=["time_s"])
    figure = new_figure()
    ax = figure.axes[0]
    plot_curves(ax, curves, by, label=str(frame["run"].iloc[0]), log=log, hours=hours)
    ax.set_ylabel(ylabel or metric)
    seeds = int(curves["runs"].max())
    band = " (mean ± std over seeds)" if seeds > 1 else ""
    axis = "against simulated time" if hours else "per round"
    ax.set_title(f"{ylabel or metric} {axis}{band}")
    configurations = len(curves.drop_duplicates(by)) if by else 1
    ax.legend(fontsize=8, loc="best" if configurations <= 6 else "upper left", ncols=1)
    return figure


def _first_runs(frame: pd.DataFrame, keys_: Sequence[str]) -> list[tuple[dict[str, Any], str]]:
    """(configuration, run name) of the lowest-seed run of each configuration."""
    per_run = frame.drop_duplicates("run")
    if "seed" in per_run:
        per_run = per_run.sort_values("seed", kind="stable")
    chosen = per_run.drop_duplicates(list(keys_)) if keys_ else per_run.head(1)
    return [({k: row[k] for k in keys_}, str(row["run"])) for _, row in chosen.iterrows()][
        :MAX_PANELS
    ]


def participation_figure(frame: pd.DataFrame, paths: Mapping[str, Path]) -> Figure:
    """One heatmap per participation configuration (its lowest-seed run)."""
    keys_ = [k for k in varying_keys(frame) if k.startswith("participation.")]
    chosen = _first_runs(frame, keys_)
    figure = new_figure(len(chosen), height=4.0)
    for ax, (values, run) in zip(figure.axes, chosen, strict=False):
        seed = frame.loc[frame["run"] == run, "seed"].iloc[0] if "seed" in frame else ""
        title = configuration_label(values) or run
        plot_participation(ax, participation_codes(paths[run]), title=f"{title} (seed {seed})")
    figure.legend(handles=participation_legend(), loc="outside lower center", ncols=4, fontsize=8)
    return figure


def omega_figure(frame: pd.DataFrame, paths: Mapping[str, Path]) -> Figure | None:
    """FedAU's ω vs 1/p_n per configuration that recorded ω; None when none did."""
    with_omega = frame[(frame["metric"] == keys.OMEGA) & (frame["phase"] == keys.PHASE_SERVER)]
    if with_omega.empty:
        return None
    subset = frame[frame["run"].isin(set(with_omega["run"]))]
    chosen = _first_runs(subset, varying_keys(subset))
    figure = new_figure(len(chosen), width=6.0, height=5.0)
    for ax, (values, run) in zip(figure.axes, chosen, strict=False):
        title = configuration_label(values) or run
        plot_omega(ax, omega_vs_probability(paths[run]), title=title)
    return figure


def diagnostic_figure(frame: pd.DataFrame, stem: str) -> Figure | None:
    """One of :data:`DIAGNOSTICS` over rounds, for the runs that recorded it."""
    metric, phase, ylabel, log = DIAGNOSTICS[stem]
    has = frame[(frame["metric"] == metric) & (frame["phase"] == phase) & frame["client"].isna()]
    if has.empty:
        return None
    subset = frame[frame["run"].isin(set(has["run"]))]
    positive = bool((has["value"] > 0).all())
    return curves_figure(subset, metric, phase=phase, ylabel=ylabel, log=log and positive)


NOISE_KEY = "privacy.noise_multiplier"


def plot_privacy_utility(
    ax: Axes, summary: pd.DataFrame, by: Sequence[str], metric: str, *, title: str = ""
) -> None:
    """Final ``metric`` (mean ± std over seeds) against ε, one line per configuration of
    the keys other than the noise multiplier: a privacy-utility curve. Runs without
    noise (ε = ∞) are a dashed line of the same colour."""
    series = [k for k in by if k != NOISE_KEY]
    groups = list(summary.groupby(series, dropna=False, sort=False)) if series else [((), summary)]
    for key, rows in groups:
        values = dict(zip(series, key if isinstance(key, tuple) else (key,), strict=True))
        finite = np.isfinite(rows["epsilon_mean"].astype(float))
        group = rows[finite].sort_values("epsilon_mean")
        if group.empty:
            continue
        line = ax.errorbar(
            group["epsilon_mean"],
            group["final_mean"],
            yerr=group["final_std"].fillna(0.0),
            marker="o",
            capsize=3,
            label=configuration_label(values) if values else None,
        )
        for final in rows.loc[~finite, "final_mean"]:  # no noise: the utility to aim for
            ax.axhline(final, linestyle="--", linewidth=1, color=line.lines[0].get_color())
        if NOISE_KEY in group:
            for _, row in group.iterrows():
                ax.annotate(
                    f"σ={row[NOISE_KEY]:g}",
                    (row["epsilon_mean"], row["final_mean"]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
    ax.set_xscale("log")
    ax.set_xlabel("ε after the last round")
    ax.set_ylabel(f"final {metric}")
    ax.set_title(title or f"final {metric} vs ε")
    if series:
        ax.legend(fontsize=8)


def privacy_figure(summary: pd.DataFrame, by: Sequence[str], metric: str) -> Figure | None:
    """The privacy-utility curve, or None when no configuration has a finite ε."""
    if "epsilon_mean" not in summary:
        return None
    if not np.isfinite(summary["epsilon_mean"].astype(float)).any():
        return None
    figure = new_figure()
    plot_privacy_utility(figure.axes[0], summary, by, metric)
    return figure


def clients_figure(run: Run, metric: str = CLIENT_METRIC) -> Figure:
    """Per-client views of one run that evaluated on clients: the distribution of
    ``metric`` across clients per evaluated round (median, 25–75 % and 10–90 % bands,
    min and max, the worst-10 % mean), and each client's last value against its
    participation rate and its training examples."""
    distribution = client_distribution(run, metric)
    table = client_table(run, metric)
    figure = new_figure(3, width=5.5, height=4.0)
    band, rate_ax, size_ax = figure.axes[:3]
    rounds = distribution["round"]
    band.fill_between(
        rounds, distribution["min"], distribution["max"], color="#deebf7", label="min–max"
    )
    band.fill_between(
        rounds, distribution["q10"], distribution["q90"], color="#9ecae1", label="10–90 %"
    )
    band.fill_between(
        rounds, distribution["q25"], distribution["q75"], color="#4292c6", label="25–75 %"
    )
    band.plot(rounds, distribution["q50"], color="#08306b", label="median")
    band.plot(rounds, distribution["worst10"], color="#e6550d", ls="--", label="worst 10 % mean")
    band.set_xlabel("round")
    band.set_ylabel(metric)
    band.set_title(f"{metric} across clients")
    band.legend(fontsize=7, loc="lower right")
    band.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, column, label in (
        (rate_ax, "participation_rate", "participation rate (rounds replied / rounds)"),
        (size_ax, "train_examples", "training examples"),
    ):
        shown = table.dropna(subset=["value", column])
        ax.scatter(shown[column], shown["value"], s=14, color="#08519c")
        if shown.empty:  # e.g. a Flower app's own ClientApp: fedsim never saw its data
            ax.text(0.5, 0.5, f"{label}: not recorded", ha="center", transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel(f"last {metric}")
        ax.set_title(f"{metric} vs {column.replace('_', ' ')}")
    figure.suptitle(f"{run.path.name}: per-client {metric}")
    return figure


# --- tables --------------------------------------------------------------------------------


def _cell(mean: float, std: float, digits: int = 4) -> str:
    if pd.isna(mean):
        return "—"
    if pd.isna(std):
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {std:.2g}"


def summary_markdown(
    table: pd.DataFrame, by: Sequence[str], metric: str, target: float | None
) -> str:
    """The summary table as a markdown table (mean ± std over seeds)."""
    header = [*by, "runs", f"final {metric}", f"best {metric}"]
    timed = "time_to_target_s_mean" in table
    if target is not None:
        reach = f"{metric} {'≥' if higher_is_better(metric) else '≤'} {target:g}"
        header.append(f"rounds to {reach}")
        if timed:
            header.append(f"simulated hours to {reach}")
    private = "epsilon_mean" in table
    if private:
        header.append("ε")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [configuration_label({k: row[k]}).partition("=")[2] for k in by]
        cells += [
            str(int(row["runs"])),
            _cell(row["final_mean"], row["final_std"]),
            _cell(row["best_mean"], row["best_std"]),
        ]
        if target is not None:
            rounds = _cell(row["rounds_to_target_mean"], row["rounds_to_target_std"], 3)
            cells.append(f"{rounds} ({int(row['reached'])}/{int(row['runs'])} reached)")
            if timed:
                hours = row["time_to_target_s_mean"] / 3600, row["time_to_target_s_std"] / 3600
                cells.append(_cell(*hours, 3))
        if private:
            cells.append(_cell(row["epsilon_mean"], np.nan, 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- the report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote."""

    directory: Path
    figures: dict[str, Path]
    summary: pd.DataFrame
    runs: pd.DataFrame
    markdown: Path
    csv: Path


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png", dpi=DPI)
    return path


def write_report(
    path: str | Path,
    *,
    metric: str = keys.METRIC_ACCURACY,
    out: str | Path | None = None,
    target: float | None = None,
    phase: str | None = None,
) -> Report:
    """Figures and summary tables of the run or sweep at ``path`` into ``out``
    (default ``PATH/report``).

    Writes ``METRIC.png`` (and ``METRIC_time.png`` against simulated hours when the
    runs kept simulated time), ``participation.png``, the diagnostics present
    (``fedau_omega.png``, ``fedlaw_gamma.png``, ``gossip_consensus.png``), with
    ``[privacy]`` runs ``privacy_utility.png`` (final metric against ε),
    ``summary.md`` and ``summary.csv`` (one row per configuration) and ``runs.csv``
    (one row per run).
    """
    path = Path(path)
    runs = find_runs(path)
    paths = {run.name: run for run in runs}
    if len(paths) != len(runs):
        raise FedsimError(f"{path}: two runs share a directory name")
    frame = load_runs(runs)
    by = grid_order(varying_keys(frame), sweep_manifest(path))
    directory = output_directory(Path(out) if out is not None else path / "report", "--out")

    summary = summary_table(frame, metric, by=by, phase=phase, target=target)
    per_run = run_results(frame, metric, phase=phase, target=target)
    results = [
        *_RESULTS,
        *(["time_to_target_s"] if "time_to_target_s" in per_run else []),
        *(["epsilon"] if "epsilon" in per_run else []),
    ]
    per_run = per_run[["run", *by, *(["seed"] if "seed" in per_run else []), *results]]
    curves = curves_figure(frame, metric, by=by, phase=phase)
    figures = {metric: _save(curves, directory / f"{_stem(metric)}.png")}
    if has_simulated_time(frame):
        timed = curves_figure(frame, metric, by=by, phase=phase, hours=True)
        figures[f"{metric}_time"] = _save(timed, directory / f"{_stem(metric)}_time.png")
    figures["participation"] = _save(
        participation_figure(frame, paths), directory / "participation.png"
    )
    privacy = privacy_figure(summary, by, metric)
    if privacy is not None:
        figures["privacy_utility"] = _save(privacy, directory / "privacy_utility.png")
    omega = omega_figure(frame, paths)
    if omega is not None:
        figures["fedau_omega"] = _save(omega, directory / "fedau_omega.png")
    for stem in DIAGNOSTICS:
        diagnostic = diagnostic_figure(frame, stem)
        if diagnostic is not None:
            figures[stem] = _save(diagnostic, directory / f"{stem}.png")
    fairness = {name: fairness_summary(rows) for name, rows in frame.groupby("run", sort=False)}
    evaluated = [name for name, values in fairness.items() if values]
    if evaluated:
        chosen = _first_runs(frame[frame["run"].isin(evaluated)], by)[0][1]
        figures["clients"] = _save(
            clients_figure(load_run(paths[chosen])), directory / "clients.png"
        )
        columns = pd.DataFrame.from_dict(fairness, orient="index").rename_axis("run")
        per_run = per_run.merge(columns.reset_index(), on="run", how="left")
        summary = _with_fairness(summary, per_run, by)
        clients_note = ""
    else:
        clients_note = (
            "Per-client views: no run evaluated on clients (set [evaluate] federated = true).\n\n"
        )

    csv = directory / "summary.csv"
    summary.to_csv(csv, index=False)
    per_run.to_csv(directory / "runs.csv", index=False)
    markdown = directory / "summary.md"
    title = f"# {path.name}: {len(runs)} run{'s' if len(runs) != 1 else ''}\n\n"
    images = "".join(f"![{name}]({file.name})\n" for name, file in figures.items())
    table = summary_markdown(summary, by, metric, target)
    markdown.write_text(title + table + "\n" + clients_note + images)
    return Report(directory, figures, summary, per_run, markdown, csv)


FAIRNESS_COLUMNS = ["client_std", "client_worst10", "client_jain"]


def _with_fairness(summary: pd.DataFrame, per_run: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The summary with each configuration's mean over seeds of the fairness columns."""
    present = [c for c in FAIRNESS_COLUMNS if c in per_run]
    if by:
        means = per_run.groupby(list(by), dropna=False, sort=False)[present].mean().reset_index()
        return summary.merge(means, on=list(by), how="left")
    return summary.assign(**{c: per_run[c].mean() for c in present})


_RESULTS = ["final", "best", "best_round", "rounds_to_target"]


def _stem(metric: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in metric)


__all__ = [
    "Report",
    "clients_figure",
    "curves_figure",
    "diagnostic_figure",
    "omega_figure",
    "participation_codes",
    "participation_figure",
    "plot_curves",
    "plot_omega",
    "plot_participation",
    "plot_privacy_utility",
    "privacy_figure",
    "summary_markdown",
    "write_report",
]
