"""Kill and resume: ``python -m benchmarks.kill_resume [--trials N] [--out DIR] [--seed S]``.

fedsim promises (issue 9) that a run killed with SIGKILL at any round and resumed
ends with results identical to an uninterrupted run with the same seed: the final
model bit for bit (on CPU), the metrics table without its timing rows, the
participation table and the events (the resumed run adds one "resumed" event).
One test kills one run; this command measures the promise over many trials.

Each scenario kind runs once uninterrupted through ``fedsim run`` (the reference).
Each trial then, with ``random.Random(seed * 1000 + trial)``, picks a kind (the kinds
in turn), a kill round uniformly in ``[1, rounds - 2]`` and a delay uniformly in
``[0, 0.5]`` s; it starts ``fedsim run`` in its own process group, waits until the
checkpoint on disk reaches the kill round, sleeps the delay and SIGKILLs the whole
group (Ray's processes included), checks that no ``summary.json`` was written, runs
``fedsim resume`` and compares the results with the reference.

The kinds cover different state a resume must bring back:

- ``digits``: fedsim's own ClientApp on sklearn digits (each client's data-stream
  position lives in its Context), uniform participation with dropout, federated
  evaluation, a checkpoint every 2 rounds (so a kill may cost a round that is redone);
- ``toy-fedau``, ``toy-mifa``, ``toy-gossip``: a stateful toy ClientApp (defined in
  this module, below) with the stateful strategies FedAU, MIFA and gossip on a ring.

Clients are slowed a little (local epochs for digits, a sleep in the toy app) so a
kill can land inside a round rather than after the run has ended. It prints a
markdown table and "N trials, K identical", writes ``trials.csv`` (and every run
directory, scenario and log) to ``--out``, and exits with 1 if any trial differs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import pandas as pd
import tomli_w
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.analysis import load_run
from fedsim.errors import FedsimError
from fedsim.simulation.checkpoint import CHECKPOINT_FILE, load_checkpoint

MODULE = Path(__file__).resolve()
MAX_DELAY_S = 0.5
RUN_TIMEOUT_S = 600.0  # a whole run, or a resume (generous: the machine is shared)
SUMMARY_FILE = "summary.json"
FINAL_MODEL_FILE = "final_model.npz"

# --- the toy ClientApp (the scenarios name it by this file's path) ---------------------

toy_app = ClientApp()


@toy_app.train()
def _toy_train(msg: Message, context: Context) -> Message:
    """New arrays = 0.5 × received + (partition + 1 + earlier calls on this node).

    The call count lives in ``context.state``: a resumed run matches only if the
    global model, the strategy's state and every node's Context come back.
    """
    time.sleep(float(context.run_config.get("every_sleep_s", 0.0)))
    partition = int(context.node_config["partition-id"])
    record = context.state.config_records.get("calls", ConfigRecord({"n": 0}))
    calls = cast(int, record["n"])
    context.state.config_records["calls"] = ConfigRecord({"n": calls + 1})
    arrays = msg.content.array_records["arrays"]
    step = np.float32(partition + 1 + calls)
    new = {k: arrays[k].numpy() * np.float32(0.5) + step for k in arrays}
    reply = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
            "metrics": MetricRecord({"num-examples": 1, "calls": calls + 1}),
        }
    )
    return Message(reply, reply_to=msg)


@toy_app.evaluate()
def _toy_evaluate(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({"num-examples": 1, "eval_accuracy": 1.0})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def make_toy_model() -> torch.nn.Module:
    """The toy run's initial model: weight (1, 2) and bias (1,)."""
    return torch.nn.Linear(2, 1)


# --- the scenario kinds ---------------------------------------------------------------


def toy_scenario(name: str, strategy: dict[str, Any], every: int) -> dict[str, Any]:
    return {
        "name": f"kill-resume-{name}",
        "seed": 5,
        "rounds": 8,
        "data": {"num_clients": 5},
        "model": {"factory": f"{MODULE}:make_toy_model"},
        "client": {"app": f"{MODULE}:toy_app", "config": {"every_sleep_s": 0.15}},
        "participation": {"pattern": "bernoulli", "rates": 0.6},
        "strategy": strategy,
        "engine": {"num_actors": 1},
        "checkpoint": {"every": every},
    }


def digits_scenario() -> dict[str, Any]:
    return {
        "name": "kill-resume-digits",
        "seed": 2,
        "rounds": 10,
        "data": {
            "dataset": "digits",
            "num_clients": 5,
            "partition": "dirichlet",
            "alpha": 0.5,
            "client_test_fraction": 0.2,
        },
        # Five local epochs of batch 4: a round takes a few tenths of a second.
        "model": {"name": "mlp", "hidden": [64, 64]},
        "client": {"local_epochs": 5, "batch_size": 4, "lr": 0.05},
        "participation": {"pattern": "uniform", "clients_per_round": 3, "dropout": 0.2},
        "evaluate": {"federated": True},
        "engine": {"num_actors": 1},
        "checkpoint": {"every": 2},
    }


def scenario_kinds() -> dict[str, dict[str, Any]]:
    """The kinds trials cycle through, in order."""
    return {
        "digits": digits_scenario(),
        "toy-fedau": toy_scenario("fedau", {"name": "fedau"}, every=1),
        "toy-mifa": toy_scenario("mifa", {"name": "mifa"}, every=2),
        "toy-gossip": toy_scenario("gossip", {"name": "gossip", "topology": "ring"}, every=1),
    }


# --- running fedsim -------------------------------------------------------------------


def start_cli(args: Sequence[str], log: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """``python -m fedsim.cli ARGS`` in its own process group, output to ``log``."""
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a shell job has
    )
    return process, handle


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has exited already
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def finish(args: Sequence[str], log: Path) -> int:
    """Run ``fedsim ARGS`` to the end; its exit code (-9 when it ran past the timeout)."""
    process, handle = start_cli(args, log)
    try:
        return process.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_group(process)
        return process.returncode
    finally:
        handle.close()


def tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines()
    return " / ".join(line.strip() for line in text[-lines:])


def checkpoint_round(run_dir: Path) -> int:
    """The round of the checkpoint on disk (0: none yet)."""
    try:
        return load_checkpoint(run_dir).round
    except FedsimError:
        return 0


def wait_for_checkpoint(
    run_dir: Path, round_: int, process: subprocess.Popen[bytes]
) -> tuple[int, str | None]:
    """Wait until the checkpoint reaches ``round_``: (its round, None) or (0, why not)."""
    path = run_dir / CHECKPOINT_FILE
    deadline = time.monotonic() + RUN_TIMEOUT_S
    seen: tuple[int, int] | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return 0, f"run exited with code {process.returncode} before round {round_}"
        try:
            stat = path.stat()
            mark = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            mark = None
        if mark is not None and mark != seen:  # read the checkpoint only when it changed
            seen = mark
            done = checkpoint_round(run_dir)
            if done >= round_:
                return done, None
        time.sleep(0.02)
    return 0, f"no checkpoint of round {round_} within {RUN_TIMEOUT_S:.0f} s"


# --- comparing results ----------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    a_missing, b_missing = bool(pd.isna(a)), bool(pd.isna(b))
    if a_missing or b_missing:
        return a_missing and b_missing
    return bool(a == b)


def _plain(row: Sequence[Any]) -> tuple[Any, ...]:
    """A table row with numpy scalars as Python values (for messages)."""
    return tuple(v.item() if isinstance(v, np.generic) else v for v in row)


def frame_difference(table: str, resumed: pd.DataFrame, reference: pd.DataFrame) -> str | None:
    """The first difference between two tables, or None when they are equal exactly."""
    if list(resumed.columns) != list(reference.columns):
        return f"{table}: columns {list(resumed.columns)} vs {list(reference.columns)}"
    for row, (a, b) in enumerate(
        zip(resumed.itertuples(index=False), reference.itertuples(index=False), strict=False)
    ):
        if not all(_same(x, y) for x, y in zip(a, b, strict=True)):
            return f"{table} row {row}: resumed {_plain(a)} vs reference {_plain(b)}"
    if len(resumed) != len(reference):
        return f"{table}: {len(resumed)} rows vs {len(reference)} in the reference"
    try:
        pd.testing.assert_frame_equal(resumed, reference, check_exact=True)
    except AssertionError as error:  # dtypes, say
        return f"{table}: " + " ".join(str(error).split())
    return None


def first_difference(resumed: Path, reference: Path) -> str | None:
    """Where the resumed run's results first differ from the reference's (None: nowhere)."""
    a, b = np.load(resumed / FINAL_MODEL_FILE), np.load(reference / FINAL_MODEL_FILE)
    if a.files != b.files:
        return f"final model arrays {a.files} vs {b.files}"
    for name in a.files:
        x, y = a[name], b[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"final model {name}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        if x.tobytes() != y.tobytes():
            gap = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
            return f"final model {name}: bytes differ (max abs difference {gap:.3g})"
    run_a, run_b = load_run(resumed), load_run(reference)

    def untimed(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame.phase != "timing"].reset_index(drop=True)

    for table, x_frame, y_frame in (
        ("metrics", untimed(run_a.metrics), untimed(run_b.metrics)),
        ("participation", run_a.participation, run_b.participation),
    ):
        difference = frame_difference(table, x_frame, y_frame)
        if difference is not None:
            return difference
    events_a = [e for e in run_a.events if e["event"] != "resumed"]
    for index, (x_event, y_event) in enumerate(zip(events_a, run_b.events, strict=False)):
        if x_event != y_event:
            return f"event {index}: resumed {x_event} vs reference {y_event}"
    if len(events_a) != len(run_b.events):
        return f"events: {len(events_a)} (without 'resumed') vs {len(run_b.events)}"
    if len(events_a) == len(run_a.events):
        return "no 'resumed' event: the run was not resumed from a checkpoint"
    if (resumed / CHECKPOINT_FILE).exists():
        return f"{CHECKPOINT_FILE} still there after the resumed run finished"
    return None


# --- trials ---------------------------------------------------------------------------


@dataclass
class Trial:
    """One kill-and-resume, as a row of trials.csv."""

    trial: int
    kind: str
    rounds: int
    kill_round: int
    checkpoint_round: int = 0  # the checkpoint on disk after the kill
    delay_s: float = 0.0
    run_exit: int | None = None  # -9: killed by SIGKILL
    resume_exit: int | None = None
    identical: bool = False
    first_difference: str = ""
    trial_s: float = 0.0


def run_trial(trial: Trial, scenario_file: Path, reference: Path, out: Path) -> Trial:
    started = time.perf_counter()
    run_dir = out / "trials" / f"{trial.trial:03d}-{trial.kind}"
    logs = out / "logs"
    process, handle = start_cli(
        ["run", str(scenario_file), "--out", str(run_dir)], logs / f"{run_dir.name}-run.log"
    )
    try:
        _, problem = wait_for_checkpoint(run_dir, trial.kill_round, process)
        if problem is None:
            time.sleep(trial.delay_s)
            if process.poll() is not None:
                problem = f"run ended (code {process.returncode}) before the kill"
        kill_group(process)
    finally:
        handle.close()
    trial.run_exit = process.returncode
    trial.checkpoint_round = checkpoint_round(run_dir)
    if problem is None and (run_dir / SUMMARY_FILE).exists():
        problem = f"{SUMMARY_FILE} exists after the kill"
    if problem is None:
        log = logs / f"{run_dir.name}-resume.log"
        trial.resume_exit = finish(["resume", str(run_dir)], log)
        if trial.resume_exit != 0:
            problem = f"resume exited with code {trial.resume_exit}: {tail(log)}"
        else:
            problem = first_difference(run_dir, reference)
    trial.identical = problem is None
    trial.first_difference = problem or ""
    trial.trial_s = round(time.perf_counter() - started, 1)
    return trial


def plan_trials(count: int, seed: int, kinds: dict[str, dict[str, Any]]) -> list[Trial]:
    names = list(kinds)
    trials = []
    for t in range(count):
        draw = random.Random(seed * 1000 + t)
        kind = names[t % len(names)]
        rounds = int(kinds[kind]["rounds"])
        kill_round = draw.randint(1, rounds - 2)
        delay = draw.uniform(0.0, MAX_DELAY_S)
        trials.append(Trial(t, kind, rounds, kill_round, delay_s=round(delay, 3)))
    return trials


def run_references(kinds: dict[str, dict[str, Any]], used: set[str], out: Path) -> dict[str, Path]:
    """One uninterrupted ``fedsim run`` per kind in use; their run directories."""
    references = {}
    for kind in kinds:
        if kind not in used:
            continue
        run_dir = out / "reference" / kind
        log = out / "logs" / f"reference-{kind}.log"
        code = finish(["run", str(out / "scenarios" / f"{kind}.toml"), "--out", str(run_dir)], log)
        if code != 0 or not (run_dir / SUMMARY_FILE).exists():
            raise RuntimeError(f"reference run {kind} failed (exit code {code}): {tail(log)}")
        references[kind] = run_dir
    return references


def markdown(trials: Sequence[Trial]) -> str:
    lines = [
        "| trial | kind | kill round | checkpoint at kill | delay s | resume exit "
        "| identical | trial s | first difference |",
        "|---:|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for t in trials:
        lines.append(
            f"| {t.trial} | {t.kind} | {t.kill_round} | {t.checkpoint_round} | {t.delay_s:.3f} "
            f"| {t.resume_exit if t.resume_exit is not None else '-'} "
            f"| {'yes' if t.identical else '**no**'} | {t.trial_s:.1f} "
            f"| {t.first_difference.replace('|', '/') or '-'} |"
        )
    return "\n".join(lines)


def write_csv(trials: Sequence[Trial], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(Trial)])
        writer.writeheader()
        for trial in trials:
            writer.writerow(asdict(trial))


def run_benchmark(count: int, out: Path, seed: int) -> list[Trial]:
    """Run ``count`` trials into ``out``; the trials (also written to ``out/trials.csv``)."""
    kinds = scenario_kinds()
    for folder in ("scenarios", "logs", "trials", "reference"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for kind, scenario in kinds.items():
        (out / "scenarios" / f"{kind}.toml").write_text(tomli_w.dumps(scenario))
    trials = plan_trials(count, seed, kinds)
    started = time.perf_counter()
    references = run_references(kinds, {t.kind for t in trials}, out)
    print(f"references: {len(references)} runs in {time.perf_counter() - started:.0f} s")
    for trial in trials:
        run_trial(trial, out / "scenarios" / f"{trial.kind}.toml", references[trial.kind], out)
        verdict = "identical" if trial.identical else f"DIFFERS: {trial.first_difference}"
        print(
            f"trial {trial.trial}: {trial.kind}, kill after checkpoint {trial.kill_round} "
            f"(+{trial.delay_s:.3f} s; checkpoint {trial.checkpoint_round} on disk): {verdict}",
            flush=True,
        )
        write_csv(trials[: trial.trial + 1], out / "trials.csv")
    write_csv(trials, out / "trials.csv")
    return trials


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Kill fedsim runs with SIGKILL, resume them, compare."
    )
    parser.add_argument("--trials", type=int, default=20, help="number of kills (default 20)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: temp)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the trials' draws")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials: expected an integer >= 1")
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="fedsim-kill-resume-"))
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out}: exists and is not empty")
    out = out.resolve()
    started = time.perf_counter()
    trials = run_benchmark(args.trials, out, args.seed)
    elapsed = time.perf_counter() - started
    identical = sum(t.identical for t in trials)
    print()
    print(markdown(trials))
    print()
    print(f"{len(trials)} trials, {identical} identical")
    print(f"wall time {elapsed:.0f} s ({math.ceil(elapsed / 60)} min); results in {out}")
    return 0 if identical == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
