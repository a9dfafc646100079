"""What the benchmark measures besides time: peak memory, GPU utilisation, and summaries.

Memory is sampled, not read once: the resident set of the benchmark process and of every
process it started (Ray's GCS, raylet and actor workers are its descendants), every
``interval`` seconds, from ``/proc`` (Linux). Shared pages (the object store, the
memory-mapped client data) count once per process that maps them, so the tree's total
overstates what the machine spends; it is a like-for-like figure across runs of one way.
GPU utilisation comes from ``nvidia-smi`` where there is one.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

PROC = Path("/proc")


def _processes() -> dict[int, tuple[int, int, float]]:
    """pid → (parent pid, resident bytes, CPU seconds used) of every process (Linux)."""
    page = os.sysconf("SC_PAGE_SIZE")
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            statm = (entry / "statm").read_text().split()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is the state (field 3)
        cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        table[int(entry.name)] = (int(fields[1]), int(statm[1]) * page, cpu)
    return table


def _tree(root: int, table: dict[int, tuple[int, int, float]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def tree_rss(root: int) -> tuple[int, int]:
    """Resident bytes of ``root`` and of ``root`` plus all its descendants (Linux only)."""
    table = _processes()
    total = sum(table[pid][1] for pid in _tree(root, table) if pid in table)
    return table.get(root, (0, 0, 0.0))[1], total


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds used so far by ``root`` (this process) and all its live descendants.

    Unlike wall time it hardly depends on what else the machine runs, so it shows an
    engine's cost on a shared machine. Without ``/proc``: this process alone.

    >>> tree_cpu_seconds() > 0
    True
    """
    root = os.getpid() if root is None else root
    if not PROC.is_dir():
        return time.process_time()
    table = _processes()
    return sum(table[pid][2] for pid in _tree(root, table) if pid in table)


class MemorySampler:
    """Peak resident memory of this process and of its process tree while running.

    >>> with MemorySampler(interval=0.01) as memory:
    ...     time.sleep(0.05)
    >>> memory.peak_self_mb > 0 and memory.peak_tree_mb >= memory.peak_self_mb
    True
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak_self = 0
        self.peak_tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._available = PROC.is_dir()

    def _sample(self) -> None:
        if self._available:
            own, tree = tree_rss(os.getpid())
        else:  # no /proc: this process's high-water mark only
            own = tree = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_self = max(self.peak_self, own)
        self.peak_tree = max(self.peak_tree, tree)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> MemorySampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_self_mb(self) -> float:
        return self.peak_self / 2**20

    @property
    def peak_tree_mb(self) -> float:
        return self.peak_tree / 2**20


class GpuSampler:
    """GPU utilisation (%) and memory (MiB) from ``nvidia-smi``, timestamped, while running."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self._command = [
            "nvidia-smi",
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
            f"-lms={interval_ms}",
        ]
        self._process: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                util, memory = float(parts[0]), float(parts[1])
            except (ValueError, IndexError):
                continue
            self.samples.append((time.perf_counter(), util, memory))

    def __enter__(self) -> GpuSampler:
        try:
            self._process = subprocess.Popen(
                self._command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError:
            return self
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
            self._thread.join(timeout=2)

    def summary(self, start: float, end: float) -> dict[str, float]:
        """Mean and max utilisation and peak memory over samples in ``[start, end]``."""
        window = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not window:
            return {}
        utils = [u for u, _ in window]
        return {
            "gpu_util_mean": statistics.fmean(utils),
            "gpu_util_max": max(utils),
            "gpu_mem_mb": max(m for _, m in window),
        }


def spread(values: Sequence[float]) -> float:
    """(max − min) / median: how far repetitions disagree.

    >>> spread([1.0, 1.1, 0.9])
    0.2
    """
    if not values:
        return float("nan")
    middle = statistics.median(values)
    return round((max(values) - min(values)) / middle, 12) if middle else float("nan")
