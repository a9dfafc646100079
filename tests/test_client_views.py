"""Per-client and fairness views (fedsim.analysis.clients) and their report figure,
checked against the run's own rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedsim
from fedsim.analysis import (
    client_distribution,
    client_table,
    fairness_summary,
    has_client_metric,
    jain_index,
    load_run,
)
from fedsim.analysis.report import write_report
from tests.helpers import assert_png


def scenario(federated: bool) -> fedsim.Scenario:
    return fedsim.Scenario.from_dict(
        {
            "name": "views",
            "seed": 2,
            "rounds": 3,
            "data": {"dataset": "digits", "num_clients": 6, "client_test_fraction": 0.3},
            "model": {"name": "mlp", "hidden": [16]},
            "client": {"local_steps": 5, "lr": 0.1},
            "participation": {"pattern": "uniform", "clients_per_round": 3},
            "evaluate": {"federated": federated},
            "engine": {"kind": "inline"},
        }
    )


@pytest.fixture(scope="module")
def federated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fedsim.run(scenario(True), out=tmp_path_factory.mktemp("v") / "run").path


def test_views_match_the_rows(federated_run: Path) -> None:
    run = load_run(federated_run)
    assert has_client_metric(run)
    rows = run.metrics[
        (run.metrics.phase == "evaluate")
        & (run.metrics.metric == "eval_accuracy")
        & run.metrics.client.notna()
    ]
    distribution = client_distribution(run)
    assert distribution["round"].tolist() == sorted(rows["round"].unique())
    for _, row in distribution.iterrows():
        x = np.sort(rows[rows["round"] == row["round"]]["value"].to_numpy())
        assert row["clients"] == len(x)
        np.testing.assert_allclose(
            [row["mean"], row["std"], row["min"], row["max"], row["q50"]],
            [x.mean(), x.std(), x.min(), x.max(), np.median(x)],
        )
        assert row["worst10"] == pytest.approx(x[0])  # 10 % of < 20 clients: the worst one
        assert row["jain"] == pytest.approx(x.sum() ** 2 / (len(x) * (x**2).sum()))
    table = client_table(run)
    assert table["client"].tolist() == list(range(6))
    replied = run.participation[run.participation.replied].groupby("client").size()
    np.testing.assert_allclose(
        table["participation_rate"], table["client"].map(replied).fillna(0) / 3
    )
    last = rows.sort_values("round").groupby("client")["value"].last()
    last.index = last.index.astype("int64")
    pd.testing.assert_series_equal(
        table.set_index("client")["value"].dropna(), last, check_names=False
    )
    summary = fairness_summary(run)
    assert summary["client_worst10"] == distribution["worst10"].iloc[-1]


def test_jain_index_bounds() -> None:
    assert jain_index([1, 1, 1, 1]) == 1.0
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)  # 1/n: one client has it all


def test_report_draws_clients_and_adds_columns(federated_run: Path, tmp_path: Path) -> None:
    report = write_report(federated_run, out=tmp_path / "report")
    assert_png(report.figures["clients"])
    summary = fairness_summary(load_run(federated_run))
    for column in ("client_std", "client_worst10", "client_jain"):
        assert report.runs[column].iloc[0] == pytest.approx(summary[column])
        assert report.summary[column].iloc[0] == pytest.approx(summary[column])
    assert "no run evaluated on clients" not in report.markdown.read_text()


def test_report_says_when_no_client_evaluation(tmp_path: Path) -> None:
    run = fedsim.run(scenario(False).with_overrides({"rounds": 1}), out=tmp_path / "run")
    report = write_report(run.path, out=tmp_path / "report")
    assert "clients" not in report.figures
    assert "Per-client views: no run evaluated on clients" in report.markdown.read_text()
