"""The benchmark command: ``python -m benchmarks.run [--quick] [--reps N] [--out DIR]``.

For each workload (:mod:`benchmarks.workloads`) it runs the plain PyTorch loop, fedsim's Ray
engine (``fedsim``), with one worker also fedsim's ``inline`` engine, and Flower's
``run_simulation`` (fedsim's ``engine.kind = "flower"``), each in a fresh process
(:mod:`benchmarks.worker`), alternating the ways within every repetition and rotating which
goes first, so slow phases of a shared machine hit all of them. It prints and writes
(``results.csv``, ``profile.csv``, ``raw.json`` in ``--out``):

- per way: the median per-round wall time over the measured rounds (warm-up rounds
  excluded), the median over repetitions, their spread, the ratio to the plain loop
  (per repetition, then the median), start-up (Ray, actors, Flower's SuperLink), peak
  memory, and the largest difference of the final model from the plain loop's;
- for fedsim, where one round's time goes (configure, dispatch, training in the actors,
  transport, collect, aggregation, bookkeeping) next to the plain loop's phases.

``--quick`` runs a few rounds of small versions (what tests/test_benchmarks.py runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import spread
from benchmarks.workloads import Workload, cifar, scale, small, write_cifar_like, write_vectors

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("small", "cifar", "scale")
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
    "gpu_util_mean",
    "gpu_mem_mb",
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
    ("in actors", "time inside an actor per round (unpickle, load, SGD, pack); plain: same"),
)


def plan(
    group: str,
    quick: bool,
    device: str,
    data: Path,
    write: bool = True,
    actors: tuple[int, ...] = (),
) -> list[Workload]:
    """The workloads of one group, full size or ``quick``; ``write``: their data files too.

    ``actors`` replaces the default actor counts of the small and cifar groups.
    """
    if group == "small":
        if quick:
            return [small(rounds=3, warmup=1, actors=a) for a in actors or (1,)]
        return [small(rounds=40, warmup=5, actors=a) for a in actors or (1, 2)]
    if group == "cifar":
        # The pfl-research shape on a GPU; on a CPU fewer clients per round (and registered,
        # so that the data is smaller), which keeps the per-client work and compute dominant.
        actor_counts: tuple[int, ...] = (1,)
        if quick:
            clients, per_round, rounds, warmup = 20, 4, 2, 1
        elif device == "cuda":
            clients, per_round, rounds, warmup, actor_counts = 1000, 50, 6, 1, (1, 4)
        else:
            clients, per_round, rounds, warmup, actor_counts = 200, 10, 10, 2, (1, 2)
        path = data / f"cifar-{clients}.npz"
        if write and not path.exists():
            write_cifar_like(path, clients * 50, 100)
        ways = ("plain", "fedsim") if quick or device == "cuda" else ("plain", "fedsim", "flower")
        chosen = actors or actor_counts
        return [cifar(path, clients, per_round, rounds, warmup, a, ways) for a in chosen]
    if group == "scale":
        sizes, rounds, warmup = ((2000, 200), 3, 1) if quick else ((100_000, 1000), 40, 5)
        workloads = []
        for clients in sizes:
            path = data / f"vectors-{clients}.npz"
            if write and not path.exists():
                write_vectors(path, clients * 4, 32)
            workloads.append(scale(path, clients, rounds, warmup, examples=4))
        return workloads
    raise ValueError(f"unknown workload group {group!r}; expected one of {GROUPS}")


def run_one(
    workload: Workload, way: str, rep: int, work: Path, cpus: int, device: str
) -> dict[str, Any]:
    """One measurement in a fresh process (see :mod:`benchmarks.worker`)."""
    name = f"{workload.name}-{way}-{rep}"
    spec: dict[str, Any] = {
        "workload": workload.name,
        "way": way,
        "rep": rep,
        "scenario": workload.with_engine(cpus, device),
        "run_dir": str(work / name),
        "final_model": str(work / f"{name}.npz"),
        "cpus": cpus,
        "device": device,
        "warmup": workload.warmup,
    }
    if way in ("flower", "inline"):
        spec["scenario"]["engine"]["kind"] = way
    spec_path, result_path = work / f"{name}.spec.json", work / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
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
            "gpu_util_mean": _median_of(runs, "gpu_util_mean"),
            "gpu_mem_mb": _median_of(runs, "gpu_mem_mb"),
            "note": workload.note,
        }
        rows.append(row)
    return rows


def _median_of(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def profile(workload: Workload, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where one measured round of fedsim goes (ms, medians), next to the plain loop's."""
    fedsim = [r for r in results if r["way"] == "fedsim"]
    if not fedsim:
        return []
    names = [name for name, _ in PROFILE_PHASES]
    ours = _medians([_fedsim_phases(r, workload.actors) for r in fedsim], names)
    plain = _medians([_plain_phases(r) for r in results if r["way"] == "plain"], names)
    return [
        {
            "workload": workload.name,
            "phase": name,
            "fedsim_ms": 1e3 * ours[name],
            "plain_ms": 1e3 * plain.get(name, float("nan")),
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


def _fedsim_phases(result: dict[str, Any], actors: int) -> list[dict[str, float]]:
    out = []
    previous: dict[str, float] = {}
    measured = set(result["measured_rounds"])
    for rnd in sorted(int(r) for r in result["grid"]):
        grid = result["grid"][str(rnd)]
        delta = {k: v - previous.get(k, 0.0) for k, v in grid.items()}
        previous = grid
        if rnd not in measured:
            continue
        loop = result["loop"][str(rnd)]
        total = result["round_s"][rnd - 1]
        grid_s = delta["dispatch_s"] + delta["wait_s"] + delta["collect_s"]
        out.append(
            {
                "configure": loop["clients_s"] - grid_s,
                "dispatch": delta["dispatch_s"],
                "wait": delta["wait_s"],
                "collect": delta["collect_s"],
                "aggregate": loop["aggregate_s"],
                "bookkeeping": total - loop["clients_s"] - loop["aggregate_s"],
                "round": total,
                "in actors": delta["actor_busy_s"] / max(actors, 1),
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
        "--workloads", default=",".join(GROUPS), help=f"comma-separated, of {', '.join(GROUPS)}"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs Ray may use")
    parser.add_argument(
        "--actors", default="", help="comma-separated actor counts for small and cifar"
    )
    parser.add_argument("--note", default="", help="a remark added to every row (e.g. MPS on)")
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    reps = args.reps or (1 if args.quick else 3)
    groups = [g.strip() for g in args.workloads.split(",") if g.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    header = (
        f"fedsim benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {machine()}\n"
        f"command: python -m benchmarks.run {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    print(header, flush=True)
    rows: list[dict[str, Any]] = []
    profiles: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedsim-bench-") as scratch:
        work = Path(scratch)
        for group in groups:
            actors = tuple(int(a) for a in args.actors.split(",") if a.strip())
            for workload in plan(group, args.quick, args.device, work, actors=actors):
                results = []
                for rep in range(reps):
                    shift = rep % len(workload.ways)
                    for way in workload.ways[shift:] + workload.ways[:shift]:
                        result = run_one(workload, way, rep, work, args.cpus, args.device)
                        print(
                            f"  {workload.name} rep {rep} {way}: "
                            f"{per_round_ms(result):.1f} ms/round, "
                            f"start-up {result['startup_s']:.1f} s",
                            flush=True,
                        )
                        results.append(result)
                summary = summarise(workload, results, args.device)
                for row in summary:
                    row["note"] = "; ".join(x for x in (row["note"], args.note) if x)
                rows += summary
                profiles += profile(workload, results)
                raw += [{k: v for k, v in r.items() if k != "final_model"} for r in results]
    write_csv(args.out / "results.csv", rows, RESULT_COLUMNS)
    write_csv(
        args.out / "profile.csv", profiles, ["workload", "phase", "fedsim_ms", "plain_ms", "what"]
    )
    (args.out / "raw.json").write_text(json.dumps({"header": header, "runs": raw}, indent=1))
    shown = [c for c in RESULT_COLUMNS if c not in ("round_ms_min", "round_ms_max", "note")]
    print("\n" + format_table(rows, shown))
    print("\nwhere a fedsim round goes (ms, median):\n")
    print(format_table(profiles, ["workload", "phase", "fedsim_ms", "plain_ms", "what"]))
    print(f"\nwritten: {args.out / 'results.csv'}, {args.out / 'profile.csv'}")
    return rows


if __name__ == "__main__":
    main()
