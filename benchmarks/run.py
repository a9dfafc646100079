"""The benchmark command: ``python -m benchmarks.run [--quick] [--reps N] [--out DIR]``.

For each workload (:mod:`benchmarks.workloads`) it runs the plain PyTorch loop, fedsim's Ray
engine one message at a time (``fedsim``) and with cohort training (``fedsim+cohort``),
with one worker also fedsim's inline engine both ways (``inline``, ``inline+cohort``), and
Flower's simulation runtime (fedsim's ``engine.kind = "flower"``), each in a fresh process
(:mod:`benchmarks.worker`), alternating the ways within every repetition and rotating which
goes first, so slow phases of a shared machine hit all of them. Where Ray is not installed
(a GPU machine with torch only) the ways are the inline ones and the plain loop. It prints
and writes (``results.csv``, ``profile.csv``, ``targets.csv``, ``raw.json`` in ``--out``,
the CSVs again after every workload, and ``runs.jsonl`` after every measurement, so that a
run cut short keeps what it measured):

- per way: the median per-round wall time over the measured rounds (warm-up rounds
  excluded), the median over repetitions, their spread, the ratio to the plain loop
  (per repetition, then the median), start-up (Ray, actors, Flower's SuperLink), peak
  memory, and the largest difference of the final model from the plain loop's;
- for fedsim's ways, where one round's time goes (configure, dispatch, training in the
  actors or the driver, transport, collect, aggregation, bookkeeping) next to the plain
  loop's phases;
- the targets of issue 14 that this run's rows can check (ratios measured in one run).

``--quick`` runs a few rounds of small versions (what tests/test_benchmarks.py runs).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import spread
from benchmarks.workloads import (
    COHORT_WAYS,
    ONE_WORKER_WAYS,
    RAY_WAYS,
    WAYS,
    Workload,
    cifar,
    cifar_data,
    scale,
    small,
    write_vectors,
)

ROOT = Path(__file__).resolve().parent.parent
HIDE_RAY = ROOT / "benchmarks" / "hide_ray"  # a sitecustomize that makes `import ray` fail
GROUPS = ("small", "cifar", "scale")
# Also selectable with --workloads: one of the two workloads of the small group.
SUBGROUPS = ("small-10", "small-50")
ENGINE_WAYS = ("fedsim", "fedsim+cohort", "inline", "inline+cohort")
QUICK_50_WAYS = ("plain", "inline+cohort")
RESULT_COLUMNS = [
    "workload",
    "way",
    "actors",
    "device",
    "reps",
    "measured_rounds",
    "round_ms",
    "round_ms_min",
    "round_ms_max",
    "spread",
    "ratio_to_plain",
    "ratio_min",
    "ratio_max",
    "rounds_per_s",
    "cpu_ms",
    "cpu_ratio",
    "startup_s",
    "prepare_s",
    "peak_driver_mb",
    "peak_tree_mb",
    "max_abs_diff_vs_plain",
    "contexts",
    "cohort_share",
    "gpu_util_mean",
    "gpu_util_max",
    "gpu_mem_mb",
    "torch_peak_mb",
    "note",
]
PROFILE_PHASES = (
    ("configure", "strategy.configure_train, participation admission"),
    ("dispatch", "pickle content once, ray.put, submit the calls"),
    ("wait", "driver blocked while actors train and replies travel"),
    ("collect", "ray.get of replies (deserialise), store contexts"),
    ("aggregate", "strategy.aggregate_train (plain: the same FedAvg update)"),
    ("bookkeeping", "result rows, participation log, checks, round-end callback"),
    ("round", "wall time of a round"),
    (
        "in actors",
        "serving per round (unpickle, load, SGD, pack), per actor; inline: in the driver; "
        "plain: the same",
    ),
)
PROFILE_COLUMNS = ["workload", "phase", "plain_ms", *(f"{w}_ms" for w in ENGINE_WAYS), "what"]
TARGET_COLUMNS = ["workload", "target", "measured", "met", "how"]


def ray_available() -> bool:
    """Whether Ray can be imported here (without importing it: that takes seconds).

    An import hook that refuses ``ray`` counts as no Ray.
    """
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


def available(workloads: list[Workload], have_ray: bool) -> list[Workload]:
    """``workloads`` with the ways this machine can run: without Ray, the inline ways and
    the plain loop; a workload left with the plain loop alone is dropped.

    >>> from benchmarks.workloads import small
    >>> [w.ways for w in available([small(3, 1, 1), small(3, 1, 2)], have_ray=False)]
    [('plain', 'inline', 'inline+cohort')]
    """
    if have_ray:
        return workloads
    kept = []
    for workload in workloads:
        ways = tuple(w for w in workload.ways if w not in RAY_WAYS)
        if ways != ("plain",):
            kept.append(replace(workload, ways=ways))
    return kept


def plan(
    group: str,
    quick: bool,
    device: str,
    data: Path,
    write: bool = True,
    actors: tuple[int, ...] = (),
) -> list[Workload]:
    """The workloads of one group, full size or ``quick``; ``write``: their data files too.

    ``actors`` replaces the default actor counts of the small and cifar groups. The group
    ``small`` is ``small-10`` (10 clients per round) and ``small-50`` (50 per round).
    """
    if group == "small":
        return plan("small-10", quick, device, data, write, actors) + plan(
            "small-50", quick, device, data, write, actors
        )
    if group == "small-10":
        if quick:
            return [small(rounds=3, warmup=1, actors=a) for a in actors or (1,)]
        return [small(rounds=40, warmup=5, actors=a) for a in actors or (1, 2)]
    if group == "small-50":
        if quick:  # the quick test covers the other ways on small-10
            return [small(3, 1, a, per_round=50, ways=QUICK_50_WAYS) for a in actors or (1,)]
        return [small(rounds=20, warmup=4, actors=a, per_round=50) for a in actors or (1, 2)]
    if group == "cifar":
        # The pfl-research shape on a GPU; on a CPU fewer clients per round (and registered,
        # so that the data is smaller), which keeps the per-client work and compute dominant.
        actor_counts: tuple[int, ...] = (1,)
        one_worker: tuple[str, ...] = ONE_WORKER_WAYS
        if quick:
            clients, per_round, rounds, warmup, num_test = 20, 4, 2, 1, 100
            one_worker = ("plain", "fedsim", "inline", "inline+cohort")
        elif device == "cuda":
            # Enough measured rounds of the sequential loop (about 0.5 s each on an H200) to
            # put a ratio of 10 or more on firm ground; Flower's engine is not run on a GPU.
            clients, per_round, rounds, warmup, num_test = 1000, 50, 10, 2, 10_000
            actor_counts = (1, 4)
            one_worker = tuple(w for w in ONE_WORKER_WAYS if w != "flower")
        else:
            clients, per_round, rounds, warmup, num_test = 200, 10, 10, 2, 100
            actor_counts = (1, 2)
        path = cifar_data(data, clients, num_test, write=write)
        several = tuple(w for w in WAYS if w != "flower" or not (quick or device == "cuda"))
        return [
            cifar(path, clients, per_round, rounds, warmup, a, one_worker if a == 1 else several)
            for a in actors or actor_counts
        ]
    if group == "scale":
        sizes, rounds, warmup = ((2000, 200), 3, 1) if quick else ((100_000, 1000), 40, 5)
        workloads = []
        for clients in sizes:
            path = data / f"vectors-{clients}.npz"
            if write and not path.exists():
                write_vectors(path, clients * 4, 32)
            workloads.append(scale(path, clients, rounds, warmup, examples=4))
        return workloads
    raise ValueError(f"unknown workload group {group!r}; expected one of {GROUPS + SUBGROUPS}")


def run_one(
    workload: Workload,
    way: str,
    rep: int,
    work: Path,
    cpus: int,
    device: str,
    hide_ray: bool = False,
) -> dict[str, Any]:
    """One measurement in a fresh process (see :mod:`benchmarks.worker`); ``hide_ray``:
    one where Ray cannot be imported (:mod:`benchmarks.hide_ray`)."""
    name = f"{workload.name}-{way}-{rep}"
    spec: dict[str, Any] = {
        "workload": workload.name,
        "way": way,
        "rep": rep,
        "scenario": workload.with_engine(cpus, device, way),
        "run_dir": str(work / name),
        "final_model": str(work / f"{name}.npz"),
        "cpus": cpus,
        "device": device,
        "warmup": workload.warmup,
    }
    spec_path, result_path = work / f"{name}.spec.json", work / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    paths = [str(HIDE_RAY)] if hide_ray else []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*paths, str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", str(spec_path), str(result_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(result_path.read_text())
    result["final_model"] = spec["final_model"]
    return result


def per_round_ms(result: dict[str, Any]) -> float:
    """Median wall time of the measured rounds, in ms."""
    measured = set(result["measured_rounds"])
    times = [t for r, t in enumerate(result["round_s"], start=1) if r in measured]
    return 1e3 * statistics.median(times or result["round_s"])


def max_abs_diff(a: str, b: str) -> float:
    with np.load(a) as left, np.load(b) as right:
        return max(float(np.abs(left[k] - right[k]).max()) for k in left.files)


def summarise(
    workload: Workload, results: list[dict[str, Any]], device: str
) -> list[dict[str, Any]]:
    """One table row per way from all repetitions of ``workload``."""
    by_rep: dict[int, dict[str, dict[str, Any]]] = {}
    for result in results:
        by_rep.setdefault(result["rep"], {})[result["way"]] = result
    rows = []
    for way in workload.ways:
        runs = [reps[way] for reps in by_rep.values() if way in reps]
        if not runs:
            continue
        medians = [per_round_ms(r) for r in runs]
        ratios = [
            per_round_ms(reps[way]) / per_round_ms(reps["plain"])
            for reps in by_rep.values()
            if way in reps and "plain" in reps
        ]
        cpu_ratios = [
            reps[way]["cpu_s_per_round"] / reps["plain"]["cpu_s_per_round"]
            for reps in by_rep.values()
            if way in reps and "plain" in reps and reps["plain"].get("cpu_s_per_round")
        ]
        diffs = [
            max_abs_diff(reps[way]["final_model"], reps["plain"]["final_model"])
            for reps in by_rep.values()
            if way in reps and "plain" in reps
        ]
        shares = [
            r["cohort"]["cohort_train"] / r["cohort"]["train_served"]
            for r in runs
            if r.get("cohort") and r["cohort"].get("train_served")
        ]
        middle = statistics.median(medians)
        row = {
            "workload": workload.name,
            "way": way,
            "actors": workload.actors if way != "plain" else 1,
            "device": device,
            "reps": len(runs),
            "measured_rounds": workload.measured_rounds,
            "round_ms": middle,
            "round_ms_min": min(medians),
            "round_ms_max": max(medians),
            "spread": spread(medians),
            "ratio_to_plain": statistics.median(ratios) if ratios else float("nan"),
            "ratio_min": min(ratios) if ratios else float("nan"),
            "ratio_max": max(ratios) if ratios else float("nan"),
            "rounds_per_s": 1e3 / middle,
            "cpu_ms": 1e3 * _median_of(runs, "cpu_s_per_round"),
            "cpu_ratio": statistics.median(cpu_ratios) if cpu_ratios else float("nan"),
            "startup_s": statistics.median(r["startup_s"] for r in runs),
            "prepare_s": statistics.median(r["prepare_s"] for r in runs),
            "peak_driver_mb": statistics.median(r["peak_self_mb"] for r in runs),
            "peak_tree_mb": statistics.median(r["peak_tree_mb"] for r in runs),
            "max_abs_diff_vs_plain": max(diffs) if diffs else float("nan"),
            "contexts": _median_of(runs, "contexts"),
            # The smallest share of client-rounds trained in cohorts over the repetitions:
            # a cohort way that fell back to one at a time shows here.
            "cohort_share": min(shares) if shares else float("nan"),
            "gpu_util_mean": _median_of(runs, "gpu_util_mean"),
            "gpu_util_max": _median_of(runs, "gpu_util_max"),
            "gpu_mem_mb": _median_of(runs, "gpu_mem_mb"),
            "torch_peak_mb": _median_of(runs, "torch_peak_mb"),
            "note": workload.note,
        }
        rows.append(row)
    return rows


def _median_of(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def profile(workload: Workload, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where one measured round of each of fedsim's ways goes (ms, medians), next to the
    plain loop's."""
    names = [name for name, _ in PROFILE_PHASES]
    ours = {
        way: _medians(
            [_fedsim_phases(r, workload.actors, way) for r in results if r["way"] == way], names
        )
        for way in ENGINE_WAYS
    }
    if not any(ours.values()):
        return []
    plain = _medians([_plain_phases(r) for r in results if r["way"] == "plain"], names)
    return [
        {
            "workload": workload.name,
            "phase": name,
            "plain_ms": 1e3 * plain.get(name, float("nan")),
            **{f"{way}_ms": 1e3 * ours[way].get(name, float("nan")) for way in ENGINE_WAYS},
            "what": what,
        }
        for name, what in PROFILE_PHASES
    ]


def _medians(runs: list[list[dict[str, float]]], names: list[str]) -> dict[str, float]:
    """Per phase: the median over runs of the median over measured rounds."""
    out = {}
    for name in names:
        values = [statistics.median(r[name] for r in run) for run in runs if run and name in run[0]]
        if values:
            out[name] = statistics.median(values)
    return out


def _plain_phases(result: dict[str, Any]) -> list[dict[str, float]]:
    measured = set(result["measured_rounds"])
    return [
        {
            "aggregate": p["aggregate"],
            "round": p["round"],
            "in actors": p["load"] + p["train"] + p["pack"],
        }
        for rnd, p in result["plain_phases"].items()
        if int(rnd) in measured
    ]


def _fedsim_phases(result: dict[str, Any], actors: int, way: str) -> list[dict[str, float]]:
    """Per measured round, the phases of a fedsim round; the inline engine serves the
    messages in the driver, so it has no dispatch, wait and collect phases."""
    out = []
    previous: dict[str, float] = {}
    measured = set(result["measured_rounds"])
    inline = way.startswith("inline")
    for rnd in sorted(int(r) for r in result["grid"]):
        grid = result["grid"][str(rnd)]
        delta = {k: v - previous.get(k, 0.0) for k, v in grid.items()}
        previous = grid
        if rnd not in measured:
            continue
        loop = result["loop"][str(rnd)]
        total = result["round_s"][rnd - 1]
        if inline:
            grid_s = delta["actor_busy_s"]
            phases = {"in actors": delta["actor_busy_s"]}
        else:
            grid_s = delta["dispatch_s"] + delta["wait_s"] + delta["collect_s"]
            phases = {
                "dispatch": delta["dispatch_s"],
                "wait": delta["wait_s"],
                "collect": delta["collect_s"],
                "in actors": delta["actor_busy_s"] / max(actors, 1),
            }
        out.append(
            {
                "configure": loop["clients_s"] - grid_s,
                "aggregate": loop["aggregate_s"],
                "bookkeeping": total - loop["clients_s"] - loop["aggregate_s"],
                "round": total,
                **phases,
            }
        )
    return out


def targets(rows: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    """Issue 14's targets that ``rows`` can check, each with what was measured.

    >>> rows = [
    ...     {"workload": "small-1a", "way": "plain", "round_ms": 40.0, "ratio_to_plain": 1.0},
    ...     {"workload": "small-1a", "way": "inline+cohort", "round_ms": 24.0,
    ...      "ratio_to_plain": 0.6},
    ...     {"workload": "small-1a", "way": "flower", "round_ms": 300.0, "ratio_to_plain": 7.5},
    ... ]
    >>> [(t["target"], t["met"]) for t in targets(rows, "cpu")]
    [('inline+cohort <= 0.7 x plain', True), ('Flower >= 10 x inline+cohort', True)]
    """
    at = {(r["workload"], r["way"]): r for r in rows}
    checks: list[tuple[str, str, str, float, float, bool]] = []
    if device == "cpu":
        checks += [
            ("small-1a", "inline+cohort", "inline+cohort <= 0.7 x plain", 0.7, 1.0, True),
            (
                "small-1a",
                "fedsim+cohort",
                "fedsim+cohort (Ray, 1 actor) <= 1.0 x plain",
                1.0,
                1.0,
                True,
            ),
            ("small-50-1a", "inline+cohort", "inline+cohort <= 0.55 x plain", 0.55, 1.0, True),
        ]
    else:
        checks += [("cifar-1a", "inline+cohort", "plain >= 10 x inline+cohort", 10.0, -1.0, False)]
    out = []
    for workload, way, target, bound, power, at_most in checks:
        row = at.get((workload, way))
        if row is None or row["ratio_to_plain"] != row["ratio_to_plain"]:
            continue
        value = row["ratio_to_plain"] ** power
        out.append(
            {
                "workload": workload,
                "target": target,
                "measured": value,
                "met": value <= bound if at_most else value >= bound,
                "how": "median over repetitions of the per-repetition ratio of round times",
            }
        )
    for fast in ("inline+cohort", "fedsim+cohort"):
        flower, ours = at.get(("small-1a", "flower")), at.get(("small-1a", fast))
        if flower is None or ours is None:
            continue
        speedup = flower["round_ms"] / ours["round_ms"]
        out.append(
            {
                "workload": "small-1a",
                "target": f"Flower >= 10 x {fast}",
                "measured": speedup,
                "met": speedup >= 10,
                "how": "median round time of Flower's simulation runtime over this way's",
            }
        )
    return out


def machine() -> str:
    """A one-line description of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return f"{cpu}, {os.cpu_count()} CPUs visible, load average {load}"


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` (floats with 3 significant digits).

    >>> print(format_table([{"a": 1.23456, "b": "x"}], ["a", "b"]))
    | a | b |
    | --- | --- |
    | 1.23 | x |
    """

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if value != value else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few rounds")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (3; quick: 1)")
    parser.add_argument(
        "--workloads",
        default=",".join(GROUPS),
        help=f"comma-separated, of {', '.join(GROUPS + SUBGROUPS)} (small = small-10 and small-50)",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs Ray may use")
    parser.add_argument(
        "--actors", default="", help="comma-separated actor counts for small and cifar"
    )
    parser.add_argument(
        "--ways", default="", help="comma-separated: run only these ways (and always plain)"
    )
    parser.add_argument("--note", default="", help="a remark added to every row (e.g. MPS on)")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder for the generated data sets, kept and reused (default: a temporary one)",
    )
    parser.add_argument(
        "--hide-ray",
        action="store_true",
        help="run as if Ray were not installed (rehearses a GPU machine with torch only)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"))
    return parser.parse_args(argv)


def way_note(device: str, have_ray: bool) -> str:
    """What the output says about the ways this machine runs."""
    if have_ray:
        return "ways: plain, fedsim, fedsim+cohort, inline, inline+cohort (one worker), flower"
    where = "GPU ways are inline ones" if device == "cuda" else "the ways are inline ones"
    return (
        f"{where} (no Ray on this machine, so neither fedsim's Ray engine nor Flower's "
        "simulation runtime): plain, inline, inline+cohort"
    )


def write_tables(
    out: Path,
    rows: list[dict[str, Any]],
    profiles: list[dict[str, Any]],
    checks: list[dict[str, Any]],
) -> None:
    write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    write_csv(out / "profile.csv", profiles, PROFILE_COLUMNS)
    write_csv(out / "targets.csv", checks, TARGET_COLUMNS)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    reps = args.reps or (1 if args.quick else 3)
    groups = [g.strip() for g in args.workloads.split(",") if g.strip()]
    only = {w.strip() for w in args.ways.split(",") if w.strip()}
    have_ray = ray_available() and not args.hide_ray
    args.out.mkdir(parents=True, exist_ok=True)
    header = (
        f"fedsim benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {machine()}\n"
        f"command: python -m benchmarks.run {' '.join(argv if argv is not None else sys.argv[1:])}"
        f"\n{way_note(args.device, have_ray)}"
    )
    print(header, flush=True)
    rows: list[dict[str, Any]] = []
    profiles: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    log = args.out / "runs.jsonl"
    log.write_text("")
    with tempfile.TemporaryDirectory(prefix="fedsim-bench-") as scratch:
        work = Path(scratch)
        data = args.data or work
        data.mkdir(parents=True, exist_ok=True)
        actors = tuple(int(a) for a in args.actors.split(",") if a.strip())
        for group in groups:
            planned = available(plan(group, args.quick, args.device, data, actors=actors), have_ray)
            for workload in planned:
                if only:
                    workload = replace(
                        workload, ways=tuple(w for w in workload.ways if w == "plain" or w in only)
                    )
                results = []
                for rep in range(reps):
                    shift = rep % len(workload.ways)
                    for way in workload.ways[shift:] + workload.ways[:shift]:
                        result = run_one(
                            workload, way, rep, work, args.cpus, args.device, args.hide_ray
                        )
                        print(
                            f"  {workload.name} rep {rep} {way}: "
                            f"{per_round_ms(result):.1f} ms/round, "
                            f"start-up {result['startup_s']:.1f} s"
                            + (
                                f", {result['cohort']['cohort_train']:.0f} of "
                                f"{result['cohort']['train_served']:.0f} client-rounds in cohorts"
                                if way in COHORT_WAYS and result.get("cohort")
                                else ""
                            ),
                            flush=True,
                        )
                        results.append(result)
                        kept = {k: v for k, v in result.items() if k != "final_model"}
                        raw.append(kept)
                        with log.open("a") as handle:
                            handle.write(json.dumps(kept) + "\n")
                    # The tables so far, after every repetition: a run cut short keeps them.
                    summary = summarise(workload, results, args.device)
                    for row in summary:
                        row["note"] = "; ".join(x for x in (row["note"], args.note) if x)
                    checks = targets(rows + summary, args.device)
                    write_tables(
                        args.out, rows + summary, profiles + profile(workload, results), checks
                    )
                rows += summary
                profiles += profile(workload, results)
    write_tables(args.out, rows, profiles, checks)
    (args.out / "raw.json").write_text(json.dumps({"header": header, "runs": raw}, indent=1))
    shown = [
        c
        for c in RESULT_COLUMNS
        if c not in ("round_ms_min", "round_ms_max", "note")
        and (args.device == "cuda" or not c.startswith(("gpu_", "torch_")))
    ]
    print("\n" + format_table(rows, shown))
    print("\nwhere a round goes (ms, median; inline: served in the driver):\n")
    print(format_table(profiles, PROFILE_COLUMNS))
    if checks:
        print("\ntargets of issue 14 (ratios from this run):\n")
        print(format_table(checks, TARGET_COLUMNS))
    print(f"\n{way_note(args.device, have_ray)}")
    print(f"written: {args.out / 'results.csv'}, {args.out / 'profile.csv'}, ...")
    return rows


if __name__ == "__main__":
    main()
