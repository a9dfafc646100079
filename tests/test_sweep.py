"""Sweeps: the grid, run names, resuming an interrupted sweep, and real runs on Ray."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

from fedsim.analysis import find_runs, has_runs, load_sweep, participation_probabilities
from fedsim.analysis.report import write_report
from fedsim.cli import app
from fedsim.config import Scenario, load_scenario, scenario_from_dict
from fedsim.errors import FedsimError, ScenarioError
from fedsim.simulation import run_scenario
from fedsim.simulation.sweep import (
    SweepEvent,
    parse_grid_option,
    parse_seeds,
    plan_sweep,
    run_name,
    run_sweep,
    split_values,
)
from tests.helpers import assert_png, write_scenario
from tests.helpers_fake_runs import BASE, accuracy_of, fake_run_scenario

ROOT = Path(__file__).resolve().parents[1]
GRID = ["strategy.name=fedavg,fedau", "participation.pattern=bernoulli,markov,cyclic"]


def manifest_of(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "sweep.json").read_text())


def statuses(directory: Path) -> dict[str, str]:
    return {run["name"]: run["status"] for run in manifest_of(directory)["runs"]}


# --- the grid ----------------------------------------------------------------------------


def test_grid_values_are_read_like_set_values() -> None:
    assert parse_grid_option("client.lr=0.1,0.05") == ("client.lr", [0.1, 0.05])
    assert parse_grid_option("model.hidden=[32, 32],[64]") == ("model.hidden", [[32, 32], [64]])
    assert parse_grid_option('strategy.name="a,b",fedau') == ("strategy.name", ["a,b", "fedau"])
    assert parse_grid_option("evaluate.central=true,false") == (
        "evaluate.central",
        [True, False],
    )
    assert split_values("x, y ,z") == ["x", "y", "z"]
    assert parse_seeds("3,1") == [3, 1]
    for bad in ("client.lr", "client.lr=", "client.lr=0.1,,0.2", "=1,2"):
        with pytest.raises(ScenarioError, match="--grid"):
            parse_grid_option(bad)
    for bad in ("1,x", "1,1", ""):
        with pytest.raises(ScenarioError, match="--seeds"):
            parse_seeds(bad)


def test_plan_is_the_cross_product_with_seeds_slowest(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, BASE)
    plan = plan_sweep(path, grid=GRID, seeds="1,2", overrides=["client.lr=0.05"])
    assert len(plan.points) == 12
    assert plan.points[0].name == "strategy.name=fedavg,participation.pattern=bernoulli,seed=1"
    assert plan.points[1].name == "strategy.name=fedavg,participation.pattern=markov,seed=1"
    assert plan.points[6].name == "strategy.name=fedavg,participation.pattern=bernoulli,seed=2"
    assert plan.points[11].name == "strategy.name=fedau,participation.pattern=cyclic,seed=2"
    point = plan.points[11]
    assert point.settings == {
        "strategy.name": "fedau",
        "participation.pattern": "cyclic",
        "seed": 2,
    }
    assert point.scenario.seed == 2 and point.scenario.strategy_name == "fedau"
    assert point.scenario.participation == {"pattern": "cyclic", "rates": [0.5, 0.25, 1.0, 0.2]}
    assert point.scenario.client.lr == 0.05  # --set applies to every point
    assert plan.directory == Path("runs/fake-sweep")
    assert plan_sweep(path).points[0].name == "seed=1"  # no grid: the scenario's own seed


def test_sweep_table_of_the_scenario_file(tmp_path: Path) -> None:
    scenario = {
        **BASE,
        "sweep": {
            "seeds": [1, 2, 3],
            "grid": {"strategy": {"name": ["fedavg", "fedau"]}, "client.lr": [0.1, 0.2]},
        },
    }
    path = write_scenario(tmp_path, scenario)
    plan = plan_sweep(path)
    assert plan.grid == {"strategy.name": ["fedavg", "fedau"], "client.lr": [0.1, 0.2]}
    assert len(plan.points) == 12 and plan.seeds == [1, 2, 3]
    assert "sweep" not in plan.points[0].scenario.raw  # each run is a plain scenario
    # The command line replaces the file's grid and seeds.
    plan = plan_sweep(path, grid=["client.lr=0.3"], seeds="7")
    assert [p.name for p in plan.points] == ["client.lr=0.3,seed=7"]
    assert load_scenario(path).name == "fake"  # `fedsim run` ignores the table


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"grid": {"client.lr": 0.1}}, "sweep.grid.client.lr: expected a non-empty list"),
        ({"grid": {"client.lr": []}}, "sweep.grid.client.lr: expected a non-empty list"),
        ({"seeds": [1, "2"]}, "sweep.seeds: expected a list of integers >= 0"),
        ({"seeds": [1, 1]}, "sweep.seeds: expected distinct seeds"),
        ({"grids": {}}, r"sweep.grids: expected one of the known keys \(grid, seeds\)"),
        ({"seeds": [1], "grid": {"seed": [2, 3]}}, "sweep.grid.seed: expected seeds given once"),
        ({"grid": {"client.lr": ["fast"]}}, "client.lr: expected a number, got 'fast'"),
    ],
)
def test_sweep_table_errors_name_the_key(tmp_path: Path, sweep: dict, message: str) -> None:
    path = write_scenario(tmp_path, {**BASE, "sweep": sweep})
    with pytest.raises(ScenarioError, match=message) as error:
        plan_sweep(path)
    assert str(error.value).startswith(str(path))


def test_run_names_are_readable_safe_and_unique(tmp_path: Path) -> None:
    name = run_name({"strategy.name": "../strategies/ldawa.py:LDAWA", "model.hidden": [32, 32]})
    assert name == "strategy.name=.._strategies_ldawa.py_LDAWA,model.hidden=_32,32_"
    long = run_name({"data.path": "x" * 300})
    assert len(long) == 160 and long.startswith("data.path=xxx")
    assert long != run_name({"data.path": "x" * 301})
    # "a/b" and "a b" sanitise to the same name: both get a hash of their settings.
    path = write_scenario(tmp_path, BASE)
    plan = plan_sweep(path, grid=['name="a/b","a b"'], seeds="1")
    names = [point.name for point in plan.points]
    assert len(set(names)) == 2 and all(n.startswith("name=a_b,seed=1-") for n in names)


# --- running, interrupting, resuming (runs written by formula, no training) ---------------


class Interrupt:
    """An on_event callback that presses Ctrl-C after ``after`` runs are done."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.events: list[SweepEvent] = []

    def __call__(self, event: SweepEvent) -> None:
        self.events.append(event)
        if sum(e.kind == "done" for e in self.events) == self.after:
            raise KeyboardInterrupt


def test_interrupted_sweep_continues_where_it_stopped(tmp_path: Path) -> None:
    plan = plan_sweep(write_scenario(tmp_path, BASE), grid=GRID, seeds="1,2", out=tmp_path / "o")
    interrupt = Interrupt(after=5)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, run=fake_run_scenario, on_event=interrupt)
    names = [point.name for point in plan.points]
    assert [e.point.name for e in interrupt.events if e.kind == "done"] == names[:5]
    assert list(statuses(plan.directory).values()) == ["complete"] * 5 + ["pending"] * 7

    # Second attempt: Ctrl-C in the middle of the sixth run, after it wrote some files.
    def half_a_run(scenario: Scenario, run_dir: Path, **_: Any) -> tuple[Path, dict]:
        run_dir.mkdir(parents=True)
        (run_dir / "scenario.toml").write_text(tomli_w.dumps(scenario.raw))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, run=half_a_run)
    assert statuses(plan.directory)[names[5]] == "interrupted"
    assert not (plan.directory / names[5] / "summary.json").exists()

    events: list[SweepEvent] = []
    outcome = run_sweep(plan, run=fake_run_scenario, on_event=events.append)
    assert outcome.skipped == names[:5] and outcome.ran == names[5:] and not outcome.failed
    assert [e.kind for e in events[:5]] == ["skip"] * 5
    assert set(statuses(plan.directory).values()) == {"complete"}
    assert len(find_runs(plan.directory)) == 12
    # The sixth run was redone from scratch: its metrics are the formula's.
    frame = load_sweep(plan.directory)
    sixth = frame[(frame.run == names[5]) & (frame.metric == "accuracy")]
    assert sixth.value.tolist() == pytest.approx(
        [accuracy_of("fedau", "cyclic", 1, r) for r in range(4)]
    )
    manifest = manifest_of(plan.directory)
    assert manifest["grid"] == {
        "strategy.name": ["fedavg", "fedau"],
        "participation.pattern": ["bernoulli", "markov", "cyclic"],
    }
    assert manifest["seeds"] == [1, 2] and manifest["scenario"] == str(tmp_path / "s.toml")

    again = run_sweep(plan, run=fake_run_scenario)
    assert again.ran == [] and len(again.skipped) == 12


def test_ctrl_c_after_a_runs_last_write_leaves_it_complete(tmp_path: Path) -> None:
    """Ctrl-C between a run writing its summary and the sweep recording it: the manifest
    says what is on disk (the CLI test once saw 3 summaries and 2 "complete")."""
    plan = plan_sweep(write_scenario(tmp_path, BASE), grid=GRID, seeds="1", out=tmp_path / "o")

    def finished_then_interrupted(scenario: Scenario, run_dir: Path, **kw: Any) -> Any:
        fake_run_scenario(scenario, run_dir, **kw)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, run=finished_then_interrupted)
    first = plan.points[0].name
    assert (plan.directory / first / "summary.json").exists()
    assert statuses(plan.directory) == {p.name: "pending" for p in plan.points} | {
        first: "complete"
    }


def test_a_changed_scenario_does_not_mix_with_complete_runs(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, BASE)
    run_sweep(plan_sweep(path, grid=GRID[:1], out=tmp_path / "o"), run=fake_run_scenario)
    changed = plan_sweep(path, grid=GRID[:1], out=tmp_path / "o", overrides=["client.lr=0.5"])
    with pytest.raises(FedsimError, match=r"different scenario \(client.lr changed\)"):
        run_sweep(changed, run=fake_run_scenario)
    # A grid extended by a value reuses the complete runs.
    wider = plan_sweep(path, grid=["strategy.name=fedavg,fedau,fedlaw"], out=tmp_path / "o")
    outcome = run_sweep(wider, run=fake_run_scenario)
    assert len(outcome.skipped) == 2 and outcome.ran == ["strategy.name=fedlaw,seed=1"]


def test_runs_an_older_manifest_does_not_list_are_found_after_its_own(tmp_path: Path) -> None:
    """An older fedsim's sweep.json named only its last invocation's runs."""
    from fedsim.results import METRICS_FILE, SUMMARY_FILE, SWEEP_MANIFEST

    for name in ("a,seed=2", "b,seed=1", "a,seed=1", "unfinished"):
        (tmp_path / name).mkdir()
        (tmp_path / name / METRICS_FILE).write_bytes(b"")
        if name != "unfinished":
            (tmp_path / name / SUMMARY_FILE).write_text("{}")
    (tmp_path / SWEEP_MANIFEST).write_text(json.dumps({"runs": [{"name": "b,seed=1"}]}))
    assert [run.name for run in find_runs(tmp_path)] == ["b,seed=1", "a,seed=1", "a,seed=2"]
    assert has_runs(tmp_path) and not has_runs(tmp_path / "unfinished")


def test_more_seeds_into_the_same_directory_keep_the_earlier_runs(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, BASE)
    run_sweep(plan_sweep(path, grid=GRID[:1], seeds=[1], out=tmp_path / "o"), run=fake_run_scenario)
    run_sweep(plan_sweep(path, grid=GRID[:1], seeds=[2], out=tmp_path / "o"), run=fake_run_scenario)
    names = [run.name for run in find_runs(tmp_path / "o")]
    assert sorted(names) == sorted(
        f"strategy.name={s},seed={seed}" for s in ("fedavg", "fedau") for seed in (1, 2)
    )
    manifest = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert manifest["seeds"] == [2] and len(manifest["runs"]) == 4


def test_failures_are_recorded_and_scenario_mistakes_stop_the_sweep(tmp_path: Path) -> None:
    plan = plan_sweep(write_scenario(tmp_path, BASE), grid=GRID[:1], out=tmp_path / "o")

    def flaky(scenario: Scenario, run_dir: Path, **kwargs: Any) -> tuple[Path, dict]:
        if scenario.strategy_name == "fedavg":
            raise RuntimeError("diverged")
        return fake_run_scenario(scenario, run_dir, **kwargs)

    outcome = run_sweep(plan, run=flaky)
    assert outcome.failed == {"strategy.name=fedavg,seed=1": "RuntimeError: diverged"}
    assert outcome.ran == ["strategy.name=fedau,seed=1"]
    run = manifest_of(plan.directory)["runs"][0]
    assert run["status"] == "failed" and run["error"] == "RuntimeError: diverged"

    def mistaken(scenario: Scenario, run_dir: Path, **_: Any) -> tuple[Path, dict]:
        raise ScenarioError(scenario.source, "strategy.cutoff", "an integer >= 2", got=1)

    with pytest.raises(FedsimError, match=r"strategy\.cutoff: expected an integer >= 2, got 1"):
        run_sweep(plan, run=mistaken)  # the failed fedavg run is retried, and stops all
    assert statuses(plan.directory)["strategy.name=fedau,seed=1"] == "complete"


# --- real runs on Ray ---------------------------------------------------------------------

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 1,
    "rounds": 2,
    "data": {"dataset": "digits", "num_clients": 4, "partition": "dirichlet", "alpha": 0.5},
    "model": {"name": "mlp", "hidden": [16]},
    "client": {"local_steps": 2, "batch_size": 16, "lr": 0.1},
    "participation": {"pattern": "bernoulli", "p_mean": 0.5},
    "engine": {"num_actors": 1},
}


def test_sweep_and_report_through_the_cli(tmp_path: Path) -> None:
    """The authoring guide's comparison: FedAvg against a strategy plugin, by path (on the
    inline engine; a sweep on Ray is the Ctrl-C test's)."""
    inline = {**TINY, "strategy": {"name": "fedavg"}, "engine": {"kind": "inline"}}
    path = write_scenario(tmp_path, inline)
    plugin = ROOT / "strategies" / "clipped_fedavg.py"
    out = tmp_path / "sweep"
    args = ["sweep", str(path), "--grid", f"strategy.name=fedau,{plugin}:ClippedFedAvg"]
    args += ["--seeds", "1", "--out", str(out), "--set", "rounds=2"]
    runner = CliRunner()
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "sweep: 2 runs (2 ran, 0 already complete, 0 failed)" in done.output
    runs = find_runs(out)
    assert [run.name for run in runs] == [
        "strategy.name=fedau,seed=1",
        run_name({"strategy.name": f"{plugin}:ClippedFedAvg", "seed": 1}),
    ]
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "(0 ran, 2 already complete, 0 failed)" in again.output

    frame = load_sweep(out)
    assert set(frame["strategy.name"]) == {"fedau", f"{plugin}:ClippedFedAvg"}
    assert frame.query("metric == 'omega'")["run"].unique().tolist() == [runs[0].name]
    written = write_report(out)
    assert set(written.figures) == {"accuracy", "participation", "fedau_omega"}
    for figure in written.figures.values():
        assert_png(figure)
    assert "| clipped_fedavg.py:ClippedFedAvg | 1 |" in written.markdown.read_text()

    # p_n as the run drew it (its client data store) equals p_n recomputed from the scenario.
    from_store = participation_probabilities(runs[0])
    shutil.rmtree(runs[0] / "client_data")
    recomputed = participation_probabilities(runs[0])
    assert from_store is not None and recomputed is not None
    np.testing.assert_array_equal(from_store, recomputed)
    assert len(set(from_store.tolist())) > 1  # label-based rates differ between clients


@pytest.mark.slow
def test_cli_sweep_interrupted_by_ctrl_c_resumes_in_parallel(tmp_path: Path) -> None:
    """A 2 × 2 × 2 sweep (the issue's had 3 patterns) on Ray, stopped with SIGINT and
    finished by the same command, its points then run two at a time."""
    tiny = {**TINY, "strategy": {"name": "fedavg"}}
    path = write_scenario(tmp_path, tiny)
    command = [sys.executable, "-m", "fedsim.cli", "sweep", str(path), "--out", "sweep"]
    command += ["--grid", GRID[0], "--grid", "participation.pattern=bernoulli,cyclic"]
    command += ["--seeds", "1,2"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 400
    while len(list((tmp_path / "sweep").glob("*/summary.json"))) < 3:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "run the same command again to continue" in stderr
    complete = [n for n, s in statuses(tmp_path / "sweep").items() if s == "complete"]
    assert 3 <= len(complete) < 8

    done = subprocess.run(
        [*command, "--parallel", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ran = 8 - len(complete)
    assert f"sweep: 8 runs ({ran} ran, {len(complete)} already complete, 0 failed)" in done.stdout
    assert set(statuses(tmp_path / "sweep").values()) == {"complete"}
    report = CliRunner().invoke(app, ["report", str(tmp_path / "sweep"), "--target", "0.2"])
    assert report.exit_code == 0, report.output[-3000:]
    table = (tmp_path / "sweep" / "report" / "summary.csv").read_text().splitlines()
    assert len(table) == 1 + 4 and all(",2," in line for line in table[1:])
    for name in ("accuracy", "participation", "fedau_omega"):
        assert_png(tmp_path / "sweep" / "report" / f"{name}.png")


@pytest.mark.slow
def test_inline_sweep_runs_side_by_side_without_ray(tmp_path: Path) -> None:
    """``engine.kind = "inline"`` points run two at a time in worker processes, and each
    run equals the same run made alone."""
    inline = {**TINY, "strategy": {"name": "fedavg"}, "engine": {"kind": "inline"}}
    path = write_scenario(tmp_path, inline)
    out = tmp_path / "sweep"
    args = ["sweep", str(path), "--seeds", "1,2", "--parallel", "2", "--out", str(out)]
    done = CliRunner().invoke(app, [*args, "--set", "rounds=2"])
    assert done.exit_code == 0, done.output
    assert "sweep: 2 runs (2 ran, 0 already complete, 0 failed)" in done.output
    alone = load_scenario(path)
    alone_dir, _ = run_scenario(
        scenario_from_dict(
            {**alone.raw, "rounds": 2, "seed": 2}, source=str(path), base_dir=tmp_path
        ),
        tmp_path / "alone",
    )
    swept = np.load(out / "seed=2" / "final_model.npz")
    reference = np.load(alone_dir / "final_model.npz")
    assert all(swept[k].tobytes() == reference[k].tobytes() for k in reference.files)


def test_a_ctrl_c_whose_interrupt_was_dropped_still_stops_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python drops an exception raised inside a finaliser: a Ctrl-C landing there must
    still end the sweep, at its next event, with the interrupted exit."""
    import fedsim.api
    from fedsim.simulation.sweep import SweepEvent

    events: list[str] = []

    def sweep(plan: Any, *, on_event: Any, **_: Any) -> Any:
        point = plan.points[0]
        on_event(SweepEvent("start", point, 0, len(plan.points)))
        events.append("started")
        try:  # the Ctrl-C arrives while a finaliser runs, which swallows the interrupt
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # type: ignore[operator]
        except KeyboardInterrupt:
            events.append("dropped")
        on_event(SweepEvent("done", point, 0, len(plan.points)))
        events.append("went on")  # must not be reached
        raise AssertionError("the sweep went on after Ctrl-C")

    monkeypatch.setattr(fedsim.api, "sweep", sweep)
    path = write_scenario(tmp_path, BASE)
    out = str(tmp_path / "o")
    done = CliRunner().invoke(app, ["sweep", str(path), "--grid", GRID[0], "--out", out])
    assert events == ["started", "dropped"]
    assert done.exit_code == 130, done.output
    assert "run the same command again to continue" in done.output
