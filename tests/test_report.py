"""`fedsim report` and the analysis helpers it uses, on runs whose numbers are known.

The runs here are written through :class:`fedsim.results.RunWriter` from a formula
(``accuracy_of``), so every entry of the summary table can be worked out by hand;
tests/test_sweep.py reports on real runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tomli_w
from matplotlib.image import imread
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
from fedsim.config import Scenario
from fedsim.errors import FedsimError
from fedsim.results import ClientFacts, RoundLog, RunWriter
from fedsim.sweep import plan_sweep, run_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RATES = [0.5, 0.25, 1.0, 0.2]
BASE: dict[str, Any] = {
    "name": "fake",
    "seed": 1,
    "rounds": 3,
    "data": {"dataset": "digits", "num_clients": 4, "partition": "iid"},
    "model": {"name": "mlp", "hidden": [16]},
    "client": {"local_steps": 2, "batch_size": 16, "lr": 0.1},
    "participation": {"pattern": "bernoulli", "rates": RATES},
    "strategy": {"name": "fedavg"},
    "engine": {"num_actors": 1},
}
STRATEGY_BASE = {"fedavg": 0.5, "fedau": 0.6, "fedlaw": 0.55, "gossip": 0.4, "gossip-vc": 0.45}
PATTERN_BONUS = {"bernoulli": 0.0, "markov": 0.02, "cyclic": 0.04}


def accuracy_of(strategy: str, pattern: str, seed: int, rnd: int) -> float:
    """The fake runs' test accuracy: cyclic runs drop at round 3, so their best is round 2."""
    dip = 0.15 if pattern == "cyclic" and rnd == 3 else 0.0
    return STRATEGY_BASE[strategy] + 0.1 * rnd + PATTERN_BONUS[pattern] + 0.01 * seed - dip


def available_clients(rnd: int, seed: int) -> list[int]:
    return [c for c in range(4) if (c + rnd + seed) % 3 != 0]


def write_fake_run(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A complete run directory whose metrics follow :func:`accuracy_of`, plus the
    diagnostics of its strategy (FedAU ω, FedLAW γ and λ, gossip consensus distance)."""
    strategy, pattern = raw["strategy"]["name"], raw["participation"]["pattern"]
    seed, rounds = raw["seed"], raw["rounds"]
    writer = RunWriter(run_dir, raw)
    rates = np.array(raw["participation"]["rates"], dtype=float)
    writer.client_facts(ClientFacts(len(rates), None, None, None, rates))
    for rnd in range(rounds + 1):
        accuracy = accuracy_of(strategy, pattern, seed, rnd)
        writer.metrics(rnd, None, "central", [("accuracy", accuracy), ("loss", 2.5 - accuracy)])
        if rnd == 0:
            continue
        available = available_clients(rnd, seed)
        replied = available[:-1]  # the last reachable client is selected but never replies
        log = RoundLog(np.array(available), selected=set(available), replied=set(replied))
        writer.participation(rnd, log)
        for client in replied:
            writer.metrics(rnd, client, "train", [("num-examples", 10.0 * (client + 1))])
            if strategy == "fedau":
                writer.metric(rnd, client, "server", "omega", 1.0 + client + 0.1 * rnd)
            if strategy == "fedlaw":
                share = (client + 1) / sum(c + 1 for c in replied)
                writer.metric(rnd, client, "server", "lambda", share)
        if strategy == "fedlaw":
            writer.metric(rnd, None, "train", "gamma", 1.0 - 0.01 * rnd - 0.001 * seed)
        if strategy.startswith("gossip"):
            writer.metric(rnd, None, "train", "consensus_distance", 2.0 / rnd + 0.1 * seed)
            for suffix, shift in (("mean", -0.05), ("min", -0.1), ("max", 0.0)):
                writer.metric(rnd, None, "central", f"node_accuracy_{suffix}", accuracy + shift)
    summary = {"rounds": rounds, "final_accuracy": accuracy_of(strategy, pattern, seed, rounds)}
    writer.finish(summary)
    return summary


def fake_run_scenario(
    scenario: Scenario, run_dir: Path, *, on_round_end: Any = None
) -> tuple[Path, dict[str, Any]]:
    """Stands in for fedsim.run.run_scenario: writes a fake run, no training."""
    summary = write_fake_run(scenario.raw, run_dir)
    return run_dir, summary


def write_fake_sweep(
    directory: Path, grid: list[str], seeds: str, base: dict[str, Any] | None = None
) -> Path:
    """A sweep of ``grid`` × ``seeds`` whose runs are written by formula (no training)."""
    directory.mkdir(parents=True, exist_ok=True)
    scenario_file = directory / "scenario.in.toml"
    scenario_file.write_text(tomli_w.dumps(base or BASE))
    plan = plan_sweep(scenario_file, grid=grid, seeds=seeds, out=directory / "sweep")
    outcome = run_sweep(plan, run=fake_run_scenario)
    assert len(outcome.ran) == len(plan.points)
    return plan.directory


GRID = ["strategy.name=fedavg,fedau", "participation.pattern=bernoulli,markov,cyclic"]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_sweep(tmp_path_factory.mktemp("report"), GRID, "1,2")


@pytest.fixture(scope="module")
def report(sweep_dir: Path) -> Report:
    return write_report(sweep_dir, target=0.8)


def assert_png(path: Path, min_width: int = 300, min_height: int = 200) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000, path
    image = imread(path)
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height, (path, image.shape)
    assert image.std() > 0.01, f"{path} is blank"
    return width, height


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
