"""A learning-rate search that stops early: a scenario written as a Python script.

Each candidate learning rate runs the quick start for a few rounds on the inline
engine (one process, no Ray); the search reads each run's last central accuracy
before choosing the next and stops as soon as one reaches the target, or when
a larger rate does worse than the best so far. Run it from the repository root::

    python scenarios/lr_search.py --rounds 5 --out runs/lr-search

It uses only fedsim's public API (docs/api.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import fedsim

HERE = Path(__file__).parent


def search(
    rates: list[float], *, rounds: int, target: float, out: Path, clients: int = 20
) -> dict[float, float]:
    """Final central accuracy per learning rate tried, in the order tried."""
    base = fedsim.Scenario.from_file(
        HERE / "quickstart.toml",
        {
            "rounds": rounds,
            "engine.kind": "inline",
            "data.num_clients": clients,
            "participation.clients_per_round": max(1, clients // 2),
        },
    )
    tried: dict[float, float] = {}
    for lr in sorted(rates):
        run = fedsim.run(base.with_overrides({"client.lr": lr}), out=out / f"lr={lr:g}")
        accuracy = float(run.central("accuracy").iloc[-1])
        print(f"lr={lr:g}: accuracy {accuracy:.3f} after {rounds} rounds")
        best = max(tried.values(), default=0.0)
        tried[lr] = accuracy
        if accuracy >= target:
            print(f"lr={lr:g} reaches the target {target:g}: stopping")
            break
        if accuracy < best:
            print(f"lr={lr:g} is worse than a smaller rate: stopping")
            break
    return tried


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="0.01,0.03,0.1,0.3")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/lr-search"))
    args = parser.parse_args()
    rates = [float(text) for text in args.rates.split(",")]
    tried = search(
        rates, rounds=args.rounds, target=args.target, out=args.out, clients=args.clients
    )
    best = max(tried, key=tried.__getitem__)
    print(f"best: lr={best:g} (accuracy {tried[best]:.3f}); runs in {args.out}")


if __name__ == "__main__":
    main()
