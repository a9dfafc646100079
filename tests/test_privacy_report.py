"""ε in the analysis and the report: the summary table's column and the privacy-utility
figure, on runs written by formula (no training) so every number is known."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest

from fedsim.analysis import load_runs, run_results, summary_table
from fedsim.analysis.report import write_report
from fedsim.results import ClientFacts, RoundLog, RunWriter
from tests.helpers import assert_png
from tests.helpers_fake_runs import BASE

BASE_ACCURACY = {"fedavg": 0.6, "fedau": 0.7}
SIGMAS = (0.0, 1.0, 2.0)


def accuracy(strategy: str, sigma: float, seed: int) -> float:
    return BASE_ACCURACY[strategy] - 0.1 * sigma + 0.01 * seed


def eps(sigma: float, rnd: int) -> float:
    return math.inf if sigma == 0 else rnd / sigma


def write_private_run(run_dir: Path, strategy: str, sigma: float, seed: int) -> None:
    raw = copy.deepcopy(BASE)
    raw.update(seed=seed, rounds=2, strategy={"name": strategy})
    raw["privacy"] = {"noise_multiplier": sigma, "clip_norm": 1.0}
    writer = RunWriter(run_dir, raw)
    writer.client_facts(ClientFacts(4, None, None, None, np.full(4, 0.5)))
    for rnd in (1, 2):
        writer.participation(rnd, RoundLog(np.arange(4), selected={0, 1}, replied={0, 1}))
        writer.metric(rnd, None, "central", "accuracy", accuracy(strategy, sigma, seed) - 0.1)
        writer.metric(rnd, None, "privacy", "epsilon", eps(sigma, rnd))
    writer.metric(2, None, "central", "accuracy", accuracy(strategy, sigma, seed))
    writer.metric(2, 0, "privacy", "epsilon", 0.5)  # a client's own ε: not the run's
    writer.finish({"rounds": 2, "epsilon": eps(sigma, 2)})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("privacy-report")
    for strategy in BASE_ACCURACY:
        for sigma in SIGMAS:
            for seed in (1, 2):
                write_private_run(root / f"{strategy}-{sigma}-{seed}", strategy, sigma, seed)
    return root


def test_the_summary_table_carries_the_final_epsilon(runs: Path) -> None:
    frame = load_runs(sorted(runs.iterdir()))
    per_run = run_results(frame).set_index("run")
    assert per_run.loc["fedau-2.0-1", "epsilon"] == 1.0  # round 2 / σ 2
    assert math.isinf(per_run.loc["fedavg-0.0-2", "epsilon"])
    table = summary_table(frame, by=["strategy.name", "privacy.noise_multiplier"])
    row = table[(table["strategy.name"] == "fedavg") & (table["privacy.noise_multiplier"] == 1.0)]
    assert row["epsilon_mean"].tolist() == [2.0]
    assert row["final_mean"].tolist() == [pytest.approx(0.6 - 0.1 + 0.015)]


def test_the_report_draws_accuracy_against_epsilon(runs: Path, tmp_path: Path) -> None:
    report = write_report(runs, out=tmp_path / "report")
    assert_png(report.figures["privacy_utility"])
    markdown = report.markdown.read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| "))
    assert header.endswith("| ε |")
    assert "| fedau | 1.0 | 2 | 0.615 ± 0.0071 | 0.615 ± 0.0071 | 2 |" in markdown
    assert "privacy_utility.png" in markdown
    assert report.runs["epsilon"].notna().all()


def test_runs_without_privacy_have_no_epsilon(tmp_path: Path) -> None:
    from tests.helpers_fake_runs import write_fake_sweep

    sweep = write_fake_sweep(tmp_path, ["strategy.name=fedavg,fedau"], "1")
    report = write_report(sweep, out=tmp_path / "report")
    assert "privacy_utility" not in report.figures
    assert "epsilon" not in report.runs and "epsilon_mean" not in report.summary
