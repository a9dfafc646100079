"""The full benchmark of pfl-research's CIFAR-10 shape, as one fedsim run, timed end to end.

``python -m benchmarks.full_cifar --device cuda --out DIR [--data DIR] [--max-seconds S]``

1000 clients of 50 images (synthetic, CIFAR-shaped: :func:`benchmarks.workloads.cifar_data`),
50 per round, one local epoch of batch 10, ``fedau-cnn``, FedAvg, 1500 rounds, central
evaluation on 10 000 test images every 10 rounds; fedsim's inline engine with cohort training
(``engine.kind = "inline"``, ``engine.cohort = "auto"``), run through
:func:`fedsim.simulation.run_scenario`, the path of ``fedsim run``, with fedsim's result writing.
Checkpoints are off (the pfl-research benchmark keeps none). Issue 14's target: at most 60 s
of wall time on one GPU.

It records (``full.csv``, ``full.json`` in ``--out``, and the run's own folder ``run/``):

- ``wall_s``: from the call of ``run_scenario`` to its return: data partitioning, model
  building, CUDA start-up, every round, every evaluation (the initial model's, at round 0,
  included: 151 for 1500 rounds), the results written;
- ``first_round_s`` (from the call to the end of round 1: start-up and the first, cold round)
  and ``steady_round_ms`` (the median of fedsim's own per-round timing after round 1), with
  the sums of fedsim's timing rows (clients, aggregation, central evaluation: the initial
  model's evaluation is not in a round's timing);
- GPU utilisation (mean and max, ``nvidia-smi`` every 200 ms, after round 1) and memory (the
  GPU's peak as ``nvidia-smi`` saw it, and PyTorch's peak allocation), peak host memory;
- the share of client-rounds trained in cohorts (from the run's timing rows) and the final
  central accuracy (synthetic classes with distinct mean images: it should be near 1).

``--max-seconds`` bounds the rounds' time: when it has passed, the run stops after the
current round (fedsim's stop request) and the row says how many rounds ran, with
``projected_s``, the wall time the full run would have taken at the measured pace.
``--quick`` runs a tiny version (for tests and dry runs on a CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.measure import GpuSampler, MemorySampler
from benchmarks.run import format_table, machine, write_csv
from benchmarks.workloads import cifar_data, cifar_scenario

TARGET_S = 60.0
COLUMNS = [
    "device",
    "rounds",
    "rounds_done",
    "clients",
    "per_round",
    "evaluate_every",
    "wall_s",
    "projected_s",
    "target_s",
    "met",
    "first_round_s",
    "steady_round_ms",
    "clients_s",
    "aggregate_s",
    "evaluate_s",
    "evaluations",
    "cohort_share",
    "final_accuracy",
    "gpu_util_mean",
    "gpu_util_max",
    "gpu_mem_mb",
    "torch_peak_mb",
    "peak_host_mb",
    "stopped",
]


def scenario(
    data: Path, clients: int, per_round: int, rounds: int, every: int, device: str
) -> dict[str, Any]:
    """The full run's scenario.

    >>> s = scenario(Path("c.npz"), 1000, 50, 1500, 10, "cuda")
    >>> s["engine"]["kind"], s["engine"]["cohort"], s["evaluate"]["every"], s["rounds"]
    ('inline', 'auto', 10, 1500)
    """
    raw = cifar_scenario(data, clients, per_round, rounds)
    raw["name"] = "cifar-full"
    raw["evaluate"] = {"central": True, "every": every, "federated": False}
    raw["checkpoint"] = {"every": 0}
    raw["engine"] = {"kind": "inline", "cohort": "auto", "server_device": device}
    raw["client"]["device"] = device
    return raw


def timing(run_dir: Path, after: int) -> dict[str, float]:
    """Sums of fedsim's per-round timing rows, and the median round after round ``after``."""
    import pandas as pd

    from fedsim import keys
    from fedsim.results import METRICS_FILE

    frame = pd.read_parquet(run_dir / METRICS_FILE)
    rows = frame[(frame["phase"] == keys.PHASE_TIMING) & frame["client"].isna()]
    by_name = {name: group.set_index("round")["value"] for name, group in rows.groupby("metric")}
    out = {
        f"{name}": float(by_name[name].sum())
        for name in ("clients_s", "aggregate_s", "evaluate_s")
        if name in by_name
    }
    # Client-rounds trained in cohorts, of all served (also when the run was stopped).
    served = float(by_name["train_served"].sum()) if "train_served" in by_name else 0.0
    if served:
        out["cohort_share"] = float(by_name["cohort_train"].sum()) / served
    rounds = by_name.get("round_s")
    if rounds is not None:
        later = rounds[rounds.index > after]
        out["steady_round_ms"] = 1e3 * float(statistics.median(later)) if len(later) else 0.0
    central = frame[frame["phase"] == keys.PHASE_CENTRAL]
    out["evaluations"] = float(central["round"].nunique())
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.full_cifar", description=__doc__)
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=Path("benchmark-results/full-cifar"))
    parser.add_argument("--data", type=Path, default=None, help="data folder (kept, reused)")
    parser.add_argument("--rounds", type=int, default=1500)
    parser.add_argument("--every", type=int, default=10, help="central evaluation every N")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop the rounds then")
    parser.add_argument("--quick", action="store_true", help="20 clients, 4 per round, 6 rounds")
    args = parser.parse_args(argv)
    from fedsim.config import scenario_from_dict
    from fedsim.simulation import run_scenario
    from fedsim.simulation.checkpoint import RunInterrupted

    if args.quick:
        args.clients, args.per_round, args.rounds, args.every = 20, 4, 6, 3
    num_test = 100 if args.quick else 10_000
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"fedsim full CIFAR benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {machine()}\n"
        f"command: python -m benchmarks.full_cifar "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}\n"
        f"{args.clients} clients x 50 images, {args.per_round}/round, {args.rounds} rounds, "
        f"central evaluation on {num_test} images every {args.every}; inline engine, "
        f"cohorts on, {args.device}",
        flush=True,
    )
    started = time.perf_counter()
    data = cifar_data(args.data or args.out / "data", args.clients, num_test)
    print(f"data: {data} ({time.perf_counter() - started:.1f} s)", flush=True)
    raw = scenario(data, args.clients, args.per_round, args.rounds, args.every, args.device)
    config = scenario_from_dict(raw, source="benchmark:full-cifar", base_dir=args.out)
    run_dir = args.out / "run"
    ends: dict[int, float] = {}
    stop = threading.Event()
    progress_every = max(args.rounds // 10, 1)

    def on_round_end(rnd: int, accuracy: float | None) -> None:
        ends[rnd] = time.perf_counter()
        if ends[rnd] - begun > args.max_seconds:
            stop.set()
        if rnd % progress_every == 0 or rnd == 1:
            shown = f", accuracy {accuracy:.3f}" if accuracy is not None else ""
            print(f"  round {rnd}: {ends[rnd] - begun:.1f} s{shown}", flush=True)

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    summary: dict[str, Any] = {}
    stopped = False
    with MemorySampler() as memory, GpuSampler() as gpu:
        begun = time.perf_counter()
        try:
            _, summary = run_scenario(config, run_dir, on_round_end=on_round_end, stop=stop)
        except RunInterrupted:
            stopped = True
        finished = time.perf_counter()
    done = max(ends) if ends else 0
    wall = finished - begun
    row: dict[str, Any] = {
        "device": args.device,
        "rounds": args.rounds,
        "rounds_done": done,
        "clients": args.clients,
        "per_round": args.per_round,
        "evaluate_every": args.every,
        "wall_s": wall,
        "target_s": TARGET_S,
        "first_round_s": ends[1] - begun if 1 in ends else float("nan"),
        "peak_host_mb": memory.peak_self_mb,
        "stopped": stopped,
    }
    if done > 1:
        pace = (ends[done] - ends[1]) / (done - 1)
        row["projected_s"] = row["first_round_s"] + pace * (args.rounds - 1)
    else:
        row["projected_s"] = float("nan")
    # The target is for the full size; a quick run or a smaller one says nothing about it.
    full_size = (args.clients, args.per_round, args.rounds, args.every) == (1000, 50, 1500, 10)
    row["met"] = ((not stopped) and wall <= TARGET_S) if full_size else None
    row.update(timing(run_dir, after=1))
    row["final_accuracy"] = summary.get("final_accuracy")
    if 1 in ends and done > 1:
        row.update(gpu.summary(ends[1], ends[done]))
    if args.device == "cuda" and torch.cuda.is_available():
        row["torch_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_csv(args.out / "full.csv", [row], COLUMNS)
    (args.out / "full.json").write_text(json.dumps({"row": row, "summary": summary}, indent=1))
    print("\n" + format_table([row], COLUMNS))
    verdict = {True: "met", False: "NOT met", None: "not applicable (not the full size)"}[
        row["met"]
    ]
    if stopped:
        print(
            f"\nstopped after {done} of {args.rounds} rounds (--max-seconds {args.max_seconds:g});"
            f" projected {row['projected_s']:.1f} s for all: target of {TARGET_S:g} s {verdict}"
        )
    else:
        print(f"\n{args.rounds} rounds in {wall:.1f} s: target of {TARGET_S:g} s {verdict}")
    print(f"written: {args.out / 'full.csv'}")
    return row


if __name__ == "__main__":
    main()
