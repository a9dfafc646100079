"""Simulated time (issue 18): the device and network model, the virtual clock of a
synchronous round, deadlines in simulated seconds and over-selection, pinned on
hand-computed cases; bad ``[system]`` input is one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim import keys
from fedsim.analysis import curve, load_run, load_runs, run_results
from fedsim.analysis.report import write_report
from fedsim.config import load_scenario, scenario_from_dict
from fedsim.errors import ScenarioError
from fedsim.simulation import resume_run, run_scenario, validate
from fedsim.simulation.checkpoint import load_checkpoint
from fedsim.system import close_round, parse_duration
from fedsim.system.profile import DeviceProfiles, SystemModel, Work, build_system
from tests.helpers import (
    Crash,
    assert_final,
    assert_png,
    assert_same_results,
    crash_after,
    expected_model,
    run_cli,
    run_toy,
    toy_scenario,
    write_scenario,
)

INLINE = {"kind": "inline", "num_actors": 1}
# The toy model is Linear(2, 1): 3 float32 = 12 bytes = 96 bits each way.
BITS = 96e-6  # Mbit in one message: at this many Mbit/s a message takes 1 s


# --- the pure parts -----------------------------------------------------------------


def test_close_round_deadline_keep_first_and_missing_clients() -> None:
    arrivals = {0: 4.5, 1: 16.0, 2: 4.5}
    assert close_round(arrivals) == close_round(arrivals, deadline=20.0)
    assert close_round(arrivals).duration == 16.0 and close_round(arrivals).late == []
    closed = close_round(arrivals, deadline=10.0)
    assert (closed.on_time, closed.late, closed.duration) == ([0, 2], [1], 10.0)
    # over-selection: the first k in order of arrival, ties by client id
    closed = close_round(arrivals, keep_first=1)
    assert (closed.on_time, closed.late, closed.duration) == ([0], [2, 1], 4.5)
    closed = close_round(arrivals, keep_first=2, deadline=10.0)
    assert (closed.on_time, closed.late, closed.duration) == ([0, 2], [1], 4.5)
    # fewer than k arrive in time: the round waits out its deadline
    assert close_round(arrivals, keep_first=3, deadline=10.0).duration == 10.0
    # a dropped client: the server waits until the deadline (without one, it cannot)
    assert close_round({0: 1.0}, deadline=3.0, missing=True).duration == 3.0
    assert close_round({0: 1.0}, missing=True).duration == 1.0


def test_client_durations_from_message_sizes_speeds_and_work() -> None:
    model = SystemModel(
        DeviceProfiles(
            speed=np.array([0.5, 0.1]),
            download=np.array([BITS, BITS / 2]),
            upload=np.array([BITS, BITS / 4]),
            latency=np.array([0.5, 0.0]),
        ),
        work=Work(local_steps=None, local_epochs=1, batch_size=32, train_examples=None),
        seed=0,
    )
    first = model.client_time(1, 0, down_bytes=12, up_bytes=12, replied_examples=1)
    second = model.client_time(1, 1, down_bytes=12, up_bytes=12, replied_examples=1)
    assert (first.download, first.compute, first.upload, first.latency) == pytest.approx(
        (1.0, 2.0, 1.0, 0.5)
    )
    assert (second.download, second.compute, second.upload, second.latency) == pytest.approx(
        (2.0, 10.0, 4.0, 0.0)
    )
    # the work is the scenario's: local_steps x min(batch, m_n), or local_epochs x m_n
    assert Work(5, None, 16, np.array([100, 8])).examples(1, None) == 40
    assert Work(None, 3, 16, np.array([100, 8])).examples(0, None) == 300


def test_devices_are_drawn_per_client_and_do_not_depend_on_the_number_of_clients() -> None:
    table = {
        "compute": {"distribution": "lognormal", "median": 50.0, "sigma": 1.0},
        "download": {"distribution": "uniform", "low": 1.0, "high": 10.0},
        "upload": 2.0,
        "jitter": 0.3,
    }
    work = Work(None, 1, 32, None)

    def build(n: int, seed: int = 1) -> SystemModel:
        model = build_system(
            table, {}, num_clients=n, seed=seed, source="s.toml", base_dir=Path("."), work=work
        )
        assert model is not None
        return model

    small, large = build(5), build(50)
    assert np.array_equal(small.profiles.speed, large.profiles.speed[:5])
    assert np.array_equal(small.profiles.download, large.profiles.download[:5])
    assert np.array_equal(small.factors(3), large.factors(3)[:5])
    assert not np.array_equal(build(5, seed=2).profiles.speed, small.profiles.speed)
    assert (small.profiles.download >= 1.0).all() and (small.profiles.download < 10.0).all()
    assert (small.profiles.upload == 2.0).all() and (small.profiles.latency == 0.0).all()
    assert not np.array_equal(small.factors(1), small.factors(2))


def test_durations_parse_with_units_only() -> None:
    assert parse_duration("10 s") == 10.0 and parse_duration("2min") == 120.0
    assert parse_duration("1 d") == 86400.0 and parse_duration(10) is None


# --- whole runs: the clock on a hand-computed case ------------------------------------


def timed_scenario(tmp_path: Path, **system: object) -> dict:
    """Two toy clients; client 0: 1 s down, 2 s compute, 1 s up, 0.5 s latency (4.5 s);
    client 1: 2 s down, 10 s compute, 4 s up, no latency (16 s)."""
    devices = tmp_path / "devices.csv"
    pd.DataFrame(
        {
            "client": [1, 0],
            "compute": [0.1, 0.5],
            "download": [BITS / 2, BITS],
            "upload": [BITS / 4, BITS],
            "latency": [0.0, 0.5],
        }
    ).to_csv(devices, index=False)
    scenario = toy_scenario(rounds=3, engine=INLINE, num_clients=2)
    scenario["system"] = {"file": str(devices), **system}
    return scenario


def clock_of(run_dir: Path) -> tuple[list[float], list[float], pd.DataFrame]:
    metrics = load_run(run_dir).metrics
    rows = metrics[metrics.phase == keys.PHASE_SYSTEM]
    server = rows[rows.client.isna()]
    starts = server[server.metric == keys.ROUND_START_S].value.tolist()
    ends = server[server.metric == keys.ROUND_END_S].value.tolist()
    clients = rows[rows.client.notna()].pivot_table(
        index=["round", "client"], columns="metric", values="value"
    )
    return starts, ends, clients


def test_round_lasts_until_its_last_reply(tmp_path: Path) -> None:
    run_dir = run_toy(tmp_path, timed_scenario(tmp_path))
    starts, ends, clients = clock_of(run_dir)
    assert starts == pytest.approx([0.0, 16.0, 32.0]) and ends == pytest.approx([16, 32, 48])
    first = clients.loc[1]
    assert first.loc[
        0, [keys.DOWNLOAD_S, keys.COMPUTE_S, keys.UPLOAD_S, keys.LATENCY_S]
    ].tolist() == (pytest.approx([1.0, 2.0, 1.0, 0.5]))
    assert first.loc[1, keys.ARRIVAL_S] == pytest.approx(16.0)
    assert not load_run(run_dir).participation.late.any()
    devices = load_run(run_dir).devices
    assert devices is not None and devices.compute.tolist() == [0.5, 0.1]
    assert devices.latency.tolist() == [0.5, 0.0]
    # both replies aggregated: mean of (partition + 1 + calls) = 1.5, 2.5, 3.5
    assert_final(run_dir, expected_model(tmp_path, [1.5, 2.5, 3.5]))


def test_deadline_in_simulated_seconds_makes_the_slow_client_late(tmp_path: Path) -> None:
    scenario = timed_scenario(tmp_path)
    scenario["participation"] = {"deadline": "10 s"}
    run_dir = run_toy(tmp_path, scenario)
    starts, ends, _ = clock_of(run_dir)
    assert starts == pytest.approx([0, 10, 20]) and ends == pytest.approx([10, 20, 30])
    part = load_run(run_dir).participation
    assert part[part.late].client.tolist() == [1, 1, 1]
    assert part[part.replied].client.tolist() == [0, 0, 0]
    assert_final(run_dir, expected_model(tmp_path, [1.0, 2.0, 3.0]))  # client 0 alone


def test_over_selection_keeps_the_first_reply(tmp_path: Path) -> None:
    run_dir = run_toy(tmp_path, timed_scenario(tmp_path, keep_first=1))
    _, ends, _ = clock_of(run_dir)
    assert ends == pytest.approx([4.5, 9.0, 13.5])
    part = load_run(run_dir).participation
    assert part[part.late].client.tolist() == [1, 1, 1]
    assert_final(run_dir, expected_model(tmp_path, [1.0, 2.0, 3.0]))


def test_without_a_system_table_there_are_no_time_rows(tmp_path: Path) -> None:
    run_dir = run_toy(tmp_path, toy_scenario(rounds=2, engine=INLINE, num_clients=2))
    assert keys.PHASE_SYSTEM not in set(load_run(run_dir).metrics.phase)
    assert load_run(run_dir).devices is None


# --- bad input ------------------------------------------------------------------------

BAD = [
    ({"compute": -1.0}, {}, "system.compute: expected a number > 0, got -1.0"),
    ({"compute": 5.0, "speed": 1}, {}, "system.speed: expected one of the known keys"),
    (
        {"upload": {"distribution": "lognormal", "median": 0, "sigma": 1}},
        {},
        "system.upload.median: expected a number > 0, got 0",
    ),
    ({"compute": 5.0}, {"deadline": 30}, "participation.deadline: expected a duration with units"),
    (
        {"compute": 5.0},
        {"deadline": "30"},
        "participation.deadline: expected a duration with units",
    ),
    (
        {"compute": 5.0},
        {"latency": {"distribution": "constant", "params": {"value": 1}}},
        "participation.latency: expected no latency table with [system]",
    ),
    ({"keep_first": 3}, {}, "system.keep_first: expected an integer in [1, 2], got 3"),
]


@pytest.mark.parametrize(("system", "participation", "message"), BAD)
def test_bad_system_values_are_one_line_errors(
    tmp_path: Path, system: dict, participation: dict, message: str
) -> None:
    scenario = toy_scenario(num_clients=2, engine=INLINE)
    scenario["system"] = system
    scenario["participation"] = participation
    with pytest.raises(ScenarioError) as error:
        validate(scenario_from_dict(scenario, source="s.toml", base_dir=tmp_path))
    assert str(error.value).startswith(f"s.toml: {message}")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"client": [0], "compute": [1.0]}, "a row for every client 0 … 1 in"),
        ({"client": [0, 1], "compute": [1.0, 1.0]}, "a column 'download' in"),
        ({"client": [0, 1], "compute": [1.0, -2.0], "download": [1, 1]}, "positive numbers"),
    ],
)
def test_bad_device_files_name_the_file_and_key(tmp_path: Path, rows: dict, message: str) -> None:
    pd.DataFrame(rows).to_csv(tmp_path / "devices.csv", index=False)
    scenario = toy_scenario(num_clients=2, engine=INLINE)
    scenario["system"] = {"file": "devices.csv", "upload": 1.0, "latency": 0.0}
    if "download" in rows:
        scenario["system"]["upload"] = 1.0
    with pytest.raises(ScenarioError) as error:
        validate(scenario_from_dict(scenario, source="s.toml", base_dir=tmp_path))
    text = str(error.value)
    assert text.startswith("s.toml: system.file: expected") and message in text, text
    assert "devices.csv" in text and "\n" not in text


def test_bad_system_table_exits_2_with_one_line(tmp_path: Path) -> None:
    scenario = toy_scenario(num_clients=2, engine=INLINE)
    scenario["system"] = {"compute": -3}
    path = write_scenario(tmp_path, scenario)
    done = run_cli("run", str(path), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "system.compute: expected a number > 0, got -3" in lines[0], lines


# --- resume and the report -------------------------------------------------------------


def test_crash_then_resume_keeps_the_clock(tmp_path: Path) -> None:
    scenario = timed_scenario(tmp_path, jitter=0.5)
    scenario["rounds"] = 5
    scenario["checkpoint"] = {"every": 2}
    scenario["participation"] = {"deadline": "12 s"}
    path = write_scenario(tmp_path, scenario, "timed.toml")
    reference, _ = run_scenario(load_scenario(path), tmp_path / "reference")
    with pytest.raises(Crash):
        run_scenario(load_scenario(path), tmp_path / "crashed", on_round_end=crash_after(3))
    assert load_checkpoint(tmp_path / "crashed").round == 2
    resumed, _ = resume_run(tmp_path / "crashed")
    assert_same_results(resumed, reference)
    _, ends, _ = clock_of(resumed)
    assert len(ends) == 5 and bool((np.diff(ends) > 0).all())


def test_report_gives_time_to_target_and_a_figure_against_simulated_hours(
    tmp_path: Path,
) -> None:
    scenario = timed_scenario(tmp_path)
    scenario["participation"] = {"deadline": "10 s"}
    run_dir = run_toy(tmp_path, scenario)
    # the toy's aggregated "calls" metric is the round number: 2 is reached in round 2,
    # which ends at 20 simulated seconds
    results = run_results(load_runs([run_dir]), "calls", target=2)
    assert results.loc[0, "rounds_to_target"] == 2 and results.loc[0, "time_to_target_s"] == 20
    report = write_report(run_dir, metric="calls", target=2)
    assert_png(report.figures["calls_time"])
    assert "simulated hours to calls ≥ 2" in report.markdown.read_text()
    assert report.summary.loc[0, "time_to_target_s_mean"] == 20
    times = curve(load_runs([run_dir]), "calls")["time_s"].tolist()
    assert times == pytest.approx([10, 20, 30])


# --- a time-driven diurnal pattern ------------------------------------------------------


def diurnal_scenario(tmp_path: Path, rounds: int, deadline: str | None) -> dict:
    """p_n(t) = clip(1 + sin(2π t / 64 s), 0, 1): everyone until t = 32 s, nobody at 48 s."""
    scenario = timed_scenario(tmp_path, idle_round="10 s")
    scenario["rounds"] = rounds
    scenario["participation"] = {
        "pattern": "diurnal",
        "rates": 1.0,
        "amplitude": 1.0,
        "clock": "simulated",
        "period": "64 s",
        **({"deadline": deadline} if deadline else {}),
    }
    return scenario


def test_time_driven_diurnal_pattern_moves_with_long_rounds(tmp_path: Path) -> None:
    # 16 s rounds: round 4 starts at 48 s, when nobody is reachable (it idles 10 s)
    run_dir = run_toy(tmp_path, diurnal_scenario(tmp_path, 4, None), "long")
    starts, ends, _ = clock_of(run_dir)
    assert starts == pytest.approx([0, 16, 32, 48]) and ends == pytest.approx([16, 32, 48, 58])
    available = load_run(run_dir).participation.groupby("round").client.count()
    assert available.to_dict() == {1: 2, 2: 2, 3: 2}  # no row: nobody reachable in round 4
    # 8 s rounds (the deadline): round 4 starts at 24 s, everyone is still reachable
    run_dir = run_toy(tmp_path, diurnal_scenario(tmp_path, 4, "8 s"), "short")
    starts, _, _ = clock_of(run_dir)
    assert starts == pytest.approx([0, 8, 16, 24])
    available = load_run(run_dir).participation.groupby("round").client.count()
    assert available.to_dict() == {1: 2, 2: 2, 3: 2, 4: 2}


def test_time_driven_pattern_needs_a_system_table(tmp_path: Path) -> None:
    scenario = diurnal_scenario(tmp_path, 2, None)
    del scenario["system"]
    with pytest.raises(ScenarioError, match=r"participation.clock: expected \"rounds\" without"):
        validate(scenario_from_dict(scenario, source="s.toml", base_dir=tmp_path))
    scenario = diurnal_scenario(tmp_path, 2, None)
    scenario["participation"]["period"] = 64
    with pytest.raises(ScenarioError, match=r"participation\.period: expected a duration"):
        validate(scenario_from_dict(scenario, source="s.toml", base_dir=tmp_path))
