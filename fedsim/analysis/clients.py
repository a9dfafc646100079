"""Per-client and fairness views of one run: what an average accuracy hides.

A federated model's mean accuracy over clients can hide the clients it fails. These
functions read the per-client rows of federated evaluation (phase ``evaluate``,
metric ``eval_accuracy`` by default: ``[evaluate] federated = true``) and the run's
``clients.parquet`` and ``participation.parquet``, and summarise them per round:

- the distribution across clients (quantiles, standard deviation, min and max);
- the mean of the worst ``fraction`` of clients (worst 10 % by default), the
  statistic of agnostic and tilted fairness objectives (Mohri et al. 2019,
  "Agnostic Federated Learning", arXiv:1902.00146; Li et al. 2020, "Fair Resource
  Allocation in Federated Learning" (q-FFL), arXiv:1905.10497, which reports the
  worst 10 % and the variance across clients);
- Jain's fairness index (Σx)² / (n·Σx²), in (0, 1], 1 when every client has the
  same value (Jain, Chiu and Hawe 1984, "A Quantitative Measure of Fairness and
  Discrimination for Resource Allocation in Shared Computer Systems", DEC-TR-301,
  arXiv:cs/9809099);
- each client's last value against its participation rate and training-set size.

Reading only: nothing here imports the training side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedsim import keys
from fedsim.analysis.runs import Run, client_facts

CLIENT_METRIC = keys.EVAL_ACCURACY
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
WORST_FRACTION = 0.1


def jain_index(values: Sequence[float] | np.ndarray) -> float:
    """Jain's fairness index (Σx)² / (n·Σx²) of non-negative values; NaN when empty or all 0.

    >>> jain_index([0.5, 0.5, 0.5]), jain_index([1.0, 0.0]), round(jain_index([1, 2, 3]), 4)
    (1.0, 0.5, 0.8571)
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    squares = float(np.sum(x * x))
    if x.size == 0 or squares == 0.0:
        return float("nan")
    return float(np.sum(x) ** 2 / (x.size * squares))


def worst_fraction_mean(
    values: Sequence[float] | np.ndarray,
    fraction: float = WORST_FRACTION,
    *,
    higher_is_better: bool = True,
) -> float:
    """The mean of the worst ``fraction`` of values (at least one value).

    >>> round(worst_fraction_mean(np.arange(1, 21) / 20), 4)  # the worst 2 of 20
    0.075
    >>> worst_fraction_mean([0.1, 0.9], 0.5, higher_is_better=False)
    0.9
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    x = np.sort(np.asarray(values, dtype=np.float64))
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan")
    k = max(1, int(np.floor(fraction * x.size)))
    return float(np.mean(x[:k] if higher_is_better else x[-k:]))


def client_values(
    run: Run | pd.DataFrame, metric: str = CLIENT_METRIC, phase: str = keys.PHASE_EVALUATE
) -> pd.DataFrame:
    """Per-client values: rounds × clients (NaN where a client was not evaluated).

    ``run``: a :class:`Run` or a long metrics table (``run.metrics``, one run's rows of
    :func:`fedsim.analysis.load_runs`).
    """
    m = run.metrics if isinstance(run, Run) else run
    rows = m[(m.phase == phase) & (m.metric == metric) & m.client.notna()]
    table = rows.pivot_table(index="round", columns="client", values="value", aggfunc="last")
    table.columns = table.columns.astype("int64")
    return table.sort_index()


def has_client_metric(
    run: Run | pd.DataFrame, metric: str = CLIENT_METRIC, phase: str = keys.PHASE_EVALUATE
) -> bool:
    """Whether the run evaluated ``metric`` on clients (federated evaluation)."""
    m = run.metrics if isinstance(run, Run) else run
    return bool(((m.phase == phase) & (m.metric == metric) & m.client.notna()).any())


def client_distribution(
    run: Run | pd.DataFrame,
    metric: str = CLIENT_METRIC,
    phase: str = keys.PHASE_EVALUATE,
    *,
    quantiles: Sequence[float] = QUANTILES,
    worst: float = WORST_FRACTION,
) -> pd.DataFrame:
    """Per evaluated round, the distribution of ``metric`` across the clients evaluated.

    Columns: ``round``, ``clients`` (how many), ``mean``, ``std`` (ddof 0, over
    clients), ``min``, ``q10`` … ``q90`` (one per quantile), ``max``, ``worst10``
    (mean of the worst ``worst`` fraction; the name follows the fraction) and
    ``jain`` (Jain's index). Empty when the run has no per-client rows.
    """
    table = client_values(run, metric, phase)
    better = not metric.endswith("loss")
    worst_name = f"worst{round(worst * 100):d}"
    records = []
    for rnd, row in table.iterrows():
        x = row.dropna().to_numpy(dtype=np.float64)
        if x.size == 0:
            continue
        record = {
            "round": int(rnd),
            "clients": int(x.size),
            "mean": float(x.mean()),
            "std": float(x.std()),
            "min": float(x.min()),
        }
        for q in quantiles:
            record[f"q{round(q * 100):d}"] = float(np.quantile(x, q))
        record["max"] = float(x.max())
        record[worst_name] = worst_fraction_mean(x, worst, higher_is_better=better)
        record["jain"] = jain_index(x)
        records.append(record)
    columns = ["round", "clients", "mean", "std", "min"]
    columns += [f"q{round(q * 100):d}" for q in quantiles] + ["max", worst_name, "jain"]
    return pd.DataFrame(records, columns=columns)


def client_table(
    run: Run, metric: str = CLIENT_METRIC, phase: str = keys.PHASE_EVALUATE
) -> pd.DataFrame:
    """One row per client: its last ``metric`` value (``value``, at ``round``), its
    participation rate (rounds it replied to a training message / rounds run) and its
    training and local test examples (``clients.parquet``)."""
    table = client_values(run, metric, phase)
    facts = client_facts(run.path).to_frame()
    rounds = int(run.participation["round"].max()) if len(run.participation) else 0
    replied = run.participation[run.participation.replied].groupby("client").size()
    frame = facts[["client", "train_examples", "test_examples"]].copy()
    frame["participation_rate"] = (
        frame["client"].map(replied).fillna(0).to_numpy() / rounds if rounds else np.nan
    )
    last = table.ffill().iloc[-1] if len(table) else pd.Series(dtype=np.float64)
    last_round = table.notna()[::-1].idxmax() if len(table) else pd.Series(dtype=np.int64)
    frame["value"] = frame["client"].map(last)
    frame["round"] = frame["client"].map(last_round)
    return frame


def fairness_summary(
    run: Run | pd.DataFrame, metric: str = CLIENT_METRIC, phase: str = keys.PHASE_EVALUATE
) -> dict[str, float]:
    """The last evaluated round's ``client_mean``, ``client_std``, ``client_worst10``,
    ``client_q10`` and ``client_jain`` (empty when the run did not evaluate on clients)."""
    distribution = client_distribution(run, metric, phase)
    if distribution.empty:
        return {}
    last = distribution.iloc[-1]
    return {
        "client_mean": float(last["mean"]),
        "client_std": float(last["std"]),
        "client_worst10": float(last["worst10"]),
        "client_q10": float(last["q10"]),
        "client_jain": float(last["jain"]),
    }


__all__ = [
    "CLIENT_METRIC",
    "client_distribution",
    "client_table",
    "client_values",
    "fairness_summary",
    "has_client_metric",
    "jain_index",
    "worst_fraction_mean",
]
