"""`fedsim report` and the analysis helpers it uses, on runs whose numbers are known.

The runs here are written through :class:`fedsim.results.RunWriter` from a formula
(``accuracy_of`` in tests/helpers_fake_runs.py), so every entry of the summary table
can be worked out by hand; tests/test_sweep.py reports on real runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsim.analysis import (
    curve,
    find_runs,
    load_sweep,
    omega_vs_probability,
    participation_probabilities,
    summary_table,
    varying_keys,
)
from fedsim.analysis.report import Report, participation_codes, write_report
from fedsim.cli import app
from fedsim.errors import FedsimError
from tests.helpers import assert_png
from tests.helpers_fake_runs import RATES, accuracy_of, available_clients, write_fake_sweep

GRID = ["strategy.name=fedavg,fedau", "participation.pattern=bernoulli,markov,cyclic"]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_sweep(tmp_path_factory.mktemp("report"), GRID, "1,2")


@pytest.fixture(scope="module")
def report(sweep_dir: Path) -> Report:
    return write_report(sweep_dir, target=0.8)


def test_summary_table_matches_the_runs(report: Report) -> None:
    written = report
    table = pd.read_csv(written.csv)
    assert list(table[["strategy.name", "participation.pattern"]].itertuples(index=False)) == [
        (s, p) for s in ("fedavg", "fedau") for p in ("bernoulli", "markov", "cyclic")
    ]
    for row in table.itertuples(index=False):
        s, p = row[0], row[1]
        finals = [accuracy_of(s, p, seed, 3) for seed in (1, 2)]
        bests = [max(accuracy_of(s, p, seed, r) for r in range(4)) for seed in (1, 2)]
        hits = [
            next((r for r in range(4) if accuracy_of(s, p, seed, r) >= 0.8), None)
            for seed in (1, 2)
        ]
        reached = [h for h in hits if h is not None]
        assert row.runs == 2
        assert row.final_mean == pytest.approx(np.mean(finals))
        assert row.final_std == pytest.approx(np.std(finals, ddof=1))
        assert row.best_mean == pytest.approx(np.mean(bests))
        assert row.reached == len(reached)
        if reached:
            assert row.rounds_to_target_mean == pytest.approx(np.mean(reached))
        else:
            assert math.isnan(row.rounds_to_target_mean)
    # Two rows worked out by hand. fedau/markov: finals 0.6 + 0.3 + 0.02 + 0.01·seed =
    # 0.93, 0.94; round 2 is 0.83, 0.84 and round 1 0.73, 0.74: target 0.8 at round 2.
    markdown = written.markdown.read_text()
    assert "| fedau | markov | 2 | 0.935 ± 0.0071 | 0.935 ± 0.0071 | 2 ± 0 (2/2 reached) |" in (
        markdown
    )
    # fedavg/cyclic dips at round 3 (0.5 + 0.3 + 0.04 + 0.01·seed - 0.15 = 0.70, 0.71) and
    # peaks at round 2 (0.75, 0.76), never reaching 0.8.
    assert "| fedavg | cyclic | 2 | 0.705 ± 0.0071 | 0.755 ± 0.0071 | — (0/2 reached) |" in (
        markdown
    )
    runs = pd.read_csv(written.directory / "runs.csv")
    assert len(runs) == 12 and set(runs["seed"]) == {1, 2}
    cyclic = runs[(runs["participation.pattern"] == "cyclic")]
    assert (cyclic["best_round"] == 2).all() and (cyclic["final"] < cyclic["best"]).all()


def test_report_writes_real_png_figures(sweep_dir: Path, report: Report) -> None:
    written = report
    assert written.directory == sweep_dir / "report"
    assert set(written.figures) == {"accuracy", "participation", "fedau_omega"}
    assert {p.name for p in written.directory.glob("*.png")} == {
        "accuracy.png",
        "participation.png",
        "fedau_omega.png",
    }
    for path in written.figures.values():
        assert_png(path)
    width, height = assert_png(written.figures["participation"])
    assert width > 2 * height  # one heatmap per pattern, side by side
    markdown = written.markdown.read_text()
    assert all(f"]({p.name})" in markdown for p in written.figures.values())


def test_loss_metric_is_minimised(sweep_dir: Path) -> None:
    table = summary_table(load_sweep(sweep_dir), "loss", target=1.785)
    row = table.iloc[0]  # fedavg, bernoulli: loss 2 - 0.1·round - 0.01·seed
    finals = [2.5 - accuracy_of("fedavg", "bernoulli", seed, 3) for seed in (1, 2)]
    assert row["best_mean"] == pytest.approx(np.mean(finals))
    # seed 1 reaches 1.785 at round 3 (1.69; 1.79 at round 2), seed 2 at round 2 (1.78)
    assert row["reached"] == 2 and row["rounds_to_target_mean"] == pytest.approx(2.5)


def test_tidy_frame_and_curves(sweep_dir: Path) -> None:
    frame = load_sweep(sweep_dir)
    assert frame["run"].nunique() == 12
    assert {"strategy.name", "participation.pattern", "seed", "data.dataset"} <= set(frame)
    assert varying_keys(frame) == ["participation.pattern", "strategy.name"]
    curves = curve(frame, "accuracy", by=["strategy.name"])
    # fedau at round 1 over 3 patterns × 2 seeds: 0.7 + mean(0, .02, .04) + mean(.01, .02)
    row = curves[(curves["strategy.name"] == "fedau") & (curves["round"] == 1)].iloc[0]
    assert row["mean"] == pytest.approx(0.7 + 0.02 + 0.015) and row["runs"] == 6
    assert row["min"] == pytest.approx(0.71) and row["max"] == pytest.approx(0.76)
    overall = summary_table(frame, "accuracy", by=[])
    assert overall["runs"].tolist() == [12]


def test_fedau_omega_against_inverse_rate(sweep_dir: Path) -> None:
    run = next(r for r in find_runs(sweep_dir) if "fedau,participation.pattern=markov" in r.name)
    probabilities = participation_probabilities(run)
    assert probabilities is not None and probabilities.tolist() == RATES
    table = omega_vs_probability(run)
    # client c replied in rounds where it was reachable and not last: ω = 1 + c + 0.1·round
    last_round = {
        c: max(r for r in (1, 2, 3) if c in available_clients(r, 1)[:-1]) for c in table.client
    }
    assert table["omega"].tolist() == pytest.approx(
        [1.0 + c + 0.1 * last_round[c] for c in table.client]
    )
    assert table["inverse_p"].tolist() == pytest.approx([1 / RATES[c] for c in table.client])


def test_participation_codes(sweep_dir: Path) -> None:
    run = find_runs(sweep_dir)[0]  # seed 1
    codes = participation_codes(run)
    assert codes.shape == (4, 3)
    for rnd in (1, 2, 3):
        available = available_clients(rnd, 1)
        expected = [0 if c not in available else 2 if c == available[-1] else 3 for c in range(4)]
        assert codes[:, rnd - 1].tolist() == expected


def test_diagnostics_of_fedlaw_and_gossip(tmp_path: Path) -> None:
    fedlaw = write_fake_sweep(tmp_path / "fedlaw", ["strategy.name=fedavg,fedlaw"], "1,2")
    written = write_report(fedlaw, out=tmp_path / "fedlaw-report")
    assert set(written.figures) == {"accuracy", "participation", "fedlaw_gamma"}
    gossip = write_fake_sweep(tmp_path / "gossip", ["strategy.name=gossip,gossip-vc"], "1")
    written = write_report(gossip, out=tmp_path / "gossip-report")
    assert set(written.figures) == {"accuracy", "participation", "gossip_consensus"}
    for path in written.figures.values():
        assert_png(path)


def test_single_run_report(sweep_dir: Path, tmp_path: Path) -> None:
    run = find_runs(sweep_dir)[0]  # fedavg, bernoulli, seed 1: 0.51, 0.61, 0.71, 0.81
    table = summary_table(load_sweep(run), target=0.7)
    assert len(table) == 1 and table["runs"].tolist() == [1]
    assert math.isnan(table["final_std"].iloc[0])
    assert table[["final_mean", "best_mean", "rounds_to_target_mean"]].values.tolist() == [
        [pytest.approx(0.81), pytest.approx(0.81), 2.0]
    ]


def test_report_cli(sweep_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run = find_runs(sweep_dir)[0]
    done = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "r"), "--target", "0.7"])
    assert done.exit_code == 0, done.output
    assert "| 1 | 0.81 | 0.81 | 2 (1/1 reached) |" in done.output
    assert f"wrote {tmp_path / 'r' / 'accuracy.png'}" in done.output
    missing = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 2
    assert "no such run or sweep directory" in missing.output
    bad = runner.invoke(app, ["report", str(sweep_dir), "--metric", "f1", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "metric 'f1' not found" in bad.output


def test_unknown_directory_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FedsimError, match="no complete runs found"):
        find_runs(tmp_path / "empty")
