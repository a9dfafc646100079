"""What Ray's token authentication costs a call: an A/B of one actor's round trip.

fedsim starts Ray with ``RAY_AUTH_MODE=token`` (docs/security.md); every RPC then
carries and checks a token. This times ``ray.get(actor.echo.remote(x))`` for a tiny
argument and for a 0.8 MB array (a small model's size), with token authentication
and without, each in a fresh process, the two modes alternating so that both see
the same machine load::

    python -m benchmarks.ray_auth_overhead --pairs 3

prints one line per process and the median ratio token / disabled.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SMALL_CALLS = 300
LARGE_CALLS = 100
PAYLOAD_FLOATS = 200_000  # 0.8 MB of float32


def measure(mode: str) -> dict[str, float]:
    """Milliseconds per round trip in this process, Ray started with ``mode``."""
    os.environ["RAY_AUTH_MODE"] = mode
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if mode == "token":
        from fedsim.engine.ray_runtime import ensure_private_token

        ensure_private_token()
    import numpy as np
    import ray

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", address="local")

    @ray.remote
    class Echo:
        def echo(self, value: object) -> object:
            return value

    actor = Echo.remote()  # type: ignore[attr-defined]
    for _ in range(50):
        ray.get(actor.echo.remote(1))
    payload = np.zeros(PAYLOAD_FLOATS, np.float32)
    started = time.perf_counter()
    for _ in range(SMALL_CALLS):
        ray.get(actor.echo.remote(1))
    small = (time.perf_counter() - started) / SMALL_CALLS * 1e3
    started = time.perf_counter()
    for _ in range(LARGE_CALLS):
        ray.get(actor.echo.remote(payload))
    large = (time.perf_counter() - started) / LARGE_CALLS * 1e3
    ray.shutdown()
    return {"small_ms": small, "large_ms": large}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="token/disabled pairs of processes")
    parser.add_argument("--mode", choices=("token", "disabled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:
        print(json.dumps(measure(args.mode)))
        return
    results: dict[str, list[dict[str, float]]] = {"token": [], "disabled": []}
    for _ in range(args.pairs):
        for mode in results:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.ray_auth_overhead", "--mode", mode],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            results[mode].append(row)
            print(f"{mode:8s} small {row['small_ms']:.3f} ms  0.8 MB {row['large_ms']:.3f} ms")
    for key in ("small_ms", "large_ms"):
        token = statistics.median(r[key] for r in results["token"])
        plain = statistics.median(r[key] for r in results["disabled"])
        print(f"{key}: token {token:.3f} ms, disabled {plain:.3f} ms, ratio {token / plain:.3f}")


if __name__ == "__main__":
    main()
