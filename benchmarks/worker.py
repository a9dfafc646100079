"""One measurement: one workload run one way, in a fresh process.

``python -m benchmarks.worker SPEC.json RESULT.json``. Each way gets its own process so
that start-up (Ray, actors, Flower's SuperLink) is measured from cold, peak memory is
that run's alone, and Flower's engine, which shuts Ray down when it ends, cannot affect
the next measurement. Round times are taken where the round loop starts a round (the
participation pattern is asked who is reachable) and where it ends (the round-end
callback), so they include everything fedsim does per round, result writing included.

Ray is imported only by the ways that use it (``fedsim``, ``fedsim+cohort``, ``flower``):
the plain loop and the inline ways run where Ray is not installed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.measure import GpuSampler, MemorySampler, tree_cpu_seconds
from benchmarks.plain_loop import run_plain
from benchmarks.workloads import ENGINE_OF
from fedsim.config import scenario_from_dict
from fedsim.results import RunWriter
from fedsim.simulation import RunControl, RunSetup, build_run

TIMING_KEYS = ("clients_s", "aggregate_s", "evaluate_s")


class StampedPattern:
    """A participation pattern that notes when each round asks it (the round's start)."""

    def __init__(self, pattern: Any) -> None:
        self.pattern = pattern
        self.starts: dict[int, float] = {}

    def reachable(self, round: int) -> np.ndarray:
        self.starts[int(round)] = time.perf_counter()
        return np.asarray(self.pattern.reachable(round))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pattern, name)


class RoundEnds:
    """Round-end times, and the process tree's CPU time where the measured rounds begin
    (the end of the last warm-up round) and end; read between rounds, so no round pays."""

    def __init__(self, warmup: int, last: int) -> None:
        self.warmup, self.last = warmup, last
        self.ends: dict[int, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, rnd: int, *_: object) -> None:
        self.ends[rnd] = time.perf_counter()
        if rnd == self.warmup:
            self.cpu["start"] = tree_cpu_seconds()
        if rnd == self.last:
            self.cpu["end"] = tree_cpu_seconds()

    def cpu_per_round(self) -> float | None:
        if "start" not in self.cpu or "end" not in self.cpu or self.last <= self.warmup:
            return None
        return (self.cpu["end"] - self.cpu["start"]) / (self.last - self.warmup)


def _grid_recorder(kind: str) -> list[Any]:
    """Make fedsim's runner build grids (``RayGrid``, or ``InlineGrid`` for ``kind =
    "inline"``) that this process can read the ``stats`` of; importing the inline one
    does not import Ray."""
    module: Any
    if kind == "inline":
        from fedsim.engine import inline_grid as module

        name = "InlineGrid"
    else:
        from fedsim.engine import ray_grid as module

        name = "RayGrid"
    grids: list[Any] = []
    base = getattr(module, name)

    class RecordedGrid(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            started = time.perf_counter()
            super().__init__(*args, **kwargs)
            self.created_s = time.perf_counter() - started
            grids.append(self)

    setattr(module, name, RecordedGrid)
    return grids


def _engine(
    way: str, prepared: RunSetup, writer: RunWriter, spec: dict[str, Any], clock: RoundEnds
) -> dict[str, Any]:
    """Run fedsim's (Ray or inline) or Flower's engine; returns final arrays, per-round
    grid stats and the run's cohort counts."""
    from fedsim.simulation.launch import run_inline, run_on_flower, run_on_ray

    kind, _ = ENGINE_OF[way]
    grids = _grid_recorder(kind) if kind != "flower" else []
    stats: dict[int, dict[str, float]] = {}

    def on_round_end(rnd: int, _accuracy: float | None) -> None:
        clock(rnd)
        if grids:
            stats[rnd] = dict(grids[-1].stats)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    started = time.perf_counter()
    if kind == "inline":  # no Ray: the driver serves the clients
        arrays = run_inline(prepared, writer, RunControl(on_round_end=on_round_end))
        return {
            "final": {name: arrays[name].numpy() for name in arrays},
            "started": started,
            "stats": stats,
            "cohort": _cohort_counts(grids),
        }
    from fedsim.engine.ray_runtime import local_ray

    gpus = 1 if spec["device"] == "cuda" else 0
    with local_ray("benchmark", num_cpus=spec["cpus"], num_gpus=gpus):
        ray_s = time.perf_counter() - started
        engine = run_on_ray if kind == "ray" else run_on_flower
        arrays = engine(prepared, writer, RunControl(on_round_end=on_round_end))
    return {
        "final": {name: arrays[name].numpy() for name in arrays},
        "stats": stats,
        "started": started,
        "ray_s": ray_s,
        "actors_s": grids[-1].created_s if grids else None,
        "contexts": len(grids[-1].contexts) if grids else None,
        "cohort": _cohort_counts(grids),
    }


def _cohort_counts(grids: list[Any]) -> dict[str, Any] | None:
    """Messages served, and those served in cohorts, over the whole run (the grid's
    counters), and the reasons messages were served one at a time."""
    if not grids:
        return None
    grid = grids[-1]
    counts: dict[str, Any] = {
        k: grid.stats.get(k, 0.0) for k in ("train_served", "cohort_train", "cohort_passes")
    }
    fallbacks = dict(getattr(grid, "cohort_fallbacks", {}) or {})
    return {**counts, "fallbacks": fallbacks} if fallbacks else counts


def _plain(prepared: RunSetup, device: str, clock: RoundEnds) -> dict[str, Any]:
    if device == "cpu":
        # The threads fedsim's ClientApp takes on a CPU: one per CPU of a worker.
        torch.set_num_threads(prepared.scenario.engine.cpu_threads)
    sync = torch.cuda.synchronize if device == "cuda" else None
    started = time.perf_counter()
    state, times = run_plain(prepared, on_round_end=clock, sync=sync)
    return {
        "final": {name: tensor.cpu().numpy() for name, tensor in state.items()},
        "started": started,
        "phases": {str(rnd): values for rnd, values in enumerate(times.rounds, start=1)},
    }


def _loop_timings(writer: RunWriter) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    for rnd, client, phase, name, value in writer.metric_rows:
        if phase == "timing" and client is None and name in TIMING_KEYS:
            rows.setdefault(int(rnd), {})[name] = float(value)
    return rows


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec`` (way, scenario, run_dir, cpus, device, warmup) and time it."""
    way, device = spec["way"], spec["device"]
    run_dir = Path(spec["run_dir"])
    scenario = scenario_from_dict(
        spec["scenario"], source=f"benchmark:{spec['workload']}", base_dir=run_dir.parent
    )
    started = time.perf_counter()
    prepared = build_run(scenario, run_dir)
    prepare_s = time.perf_counter() - started
    pattern = StampedPattern(prepared.pattern)
    prepared.pattern = pattern
    clock = RoundEnds(spec["warmup"], scenario.rounds)
    writer = RunWriter(run_dir, scenario.raw)
    with MemorySampler() as memory, GpuSampler() if device == "cuda" else _Null() as gpu:
        if way == "plain":
            out = _plain(prepared, device, clock)
        else:
            out = _engine(way, prepared, writer, spec, clock)
    rounds = sorted(clock.ends)
    warm = [r for r in rounds if r > spec["warmup"]]
    result: dict[str, Any] = {
        "way": way,
        "workload": spec["workload"],
        "rep": spec["rep"],
        "prepare_s": prepare_s,
        "startup_s": pattern.starts[rounds[0]] - out["started"] if rounds else None,
        "round_s": [clock.ends[r] - pattern.starts[r] for r in rounds],
        "measured_rounds": warm,
        "cpu_s_per_round": clock.cpu_per_round(),
        "peak_self_mb": memory.peak_self_mb,
        "peak_tree_mb": memory.peak_tree_mb,
        "ray_s": out.get("ray_s"),
        "actors_s": out.get("actors_s"),
        "contexts": out.get("contexts"),
    }
    if device == "cuda" and warm:
        result.update(gpu.summary(pattern.starts[warm[0]], clock.ends[warm[-1]]))
    if device == "cuda" and torch.cuda.is_available():
        result["torch_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["cohort"] = out.get("cohort")
    if way == "plain":
        result["plain_phases"] = out["phases"]
    else:
        result["loop"] = {str(r): v for r, v in _loop_timings(writer).items()}
        result["grid"] = {str(r): v for r, v in out["stats"].items()}
    np.savez(Path(spec["final_model"]), **out["final"])
    return result


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def summary(self, _start: float, _end: float) -> dict[str, float]:
        return {}


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[0]).read_text())
    result = measure(spec)
    Path(argv[1]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
