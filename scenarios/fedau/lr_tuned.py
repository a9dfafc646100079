"""Run each FedAU-page method at the local learning rate it chose on the validation seed.

Reads the sweep of lr_validation.toml (RUNS/lr_validation), picks each method's local
learning rate by its mean test accuracy over the last 10 % of the rounds on seed 0, and
runs, for every method whose choice differs from the reference code's, the Bernoulli
setting of paper_mnist1d.toml at that rate on seeds 1, 2, 3 into RUNS/tuned/<method>
(a method that keeps its reference rate is read from RUNS/main or RUNS/participating by
paper_table.py). Prints every ``fedsim sweep`` command before running it; ``--dry-run``
prints only.

    python scenarios/fedau/lr_tuned.py /work/runs-papers/fedau
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STRATEGIES = {
    "FedAU": '{name="fedau",server_lr=1.0}',
    "FedAvg, participating": '{name="fedavg",rule="participating",server_lr=1.78}',
    "FedAvg, all": '{name="fedavg",rule="all",server_lr=10.0}',
    "FedAvg, known p_n (oracle)": '{name="fedavg",rule="known-probability",server_lr=1.0}',
    "MIFA": '{name="mifa",server_lr=1.0}',
    "FedVARP": '{name="fedvarp",server_lr=1.0}',
}
REFERENCE_LR = {method: 0.1 for method in STRATEGIES} | {"FedAvg, participating": 0.0562}


def slug(method: str) -> str:
    """A folder name for a method.

    >>> slug("FedAvg, known p_n (oracle)")
    'fedavg-known-p_n-oracle'
    """
    kept = "".join(c if c.isalnum() or c == "_" else "-" for c in method.lower())
    return "-".join(part for part in kept.split("-") if part)


def chosen_rates(runs: Path) -> dict[str, float]:
    spec = importlib.util.spec_from_file_location("fedau_paper_table", HERE / "paper_table.py")
    assert spec is not None and spec.loader is not None
    table_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table_module)
    _, table = table_module.validation_markdown(runs / "lr_validation")
    best = table.loc[table.groupby("method")["acc_last10pct"].idxmax()]
    return dict(zip(best["method"], best["lr"], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="folder holding lr_validation/")
    parser.add_argument("--fedsim", default=str(Path(sys.executable).with_name("fedsim")))
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    for method, lr in chosen_rates(args.runs).items():
        if abs(lr - REFERENCE_LR[method]) < 1e-9:
            print(f"{method}: keeps its reference lr {lr:g}")
            continue
        command = [
            args.fedsim,
            "sweep",
            str(HERE / "paper_mnist1d.toml"),
            "--set",
            f"client.lr={lr:g}",
            "--grid",
            f"strategy={STRATEGIES[method]}",
            "--seeds",
            "1,2,3",
            "--out",
            str(args.runs / "tuned" / slug(method)),
        ]
        print(f"{method}: lr {lr:g} (reference {REFERENCE_LR[method]:g}):", " ".join(command))
        if not args.dry_run:
            subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
