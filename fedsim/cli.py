"""The ``fedsim`` command line.

User mistakes (a bad scenario, a missing file) print one line and exit with
code 2; nothing a user can get wrong ends in a traceback.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedsim.errors import FedsimError

app = typer.Typer(
    help="fedsim: federated and decentralised training simulator (Flower clients on Ray).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _fail(error: FedsimError) -> None:
    console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def run(
    scenario: Annotated[Path, typer.Argument(help="Scenario TOML file.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a scenario key: --set client.lr=0.05 (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/NAME-TIME).")
    ] = None,
    engine: Annotated[str | None, typer.Option(help="ray (fedsim's engine) or flower.")] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's per-round INFO logs.")] = False,
) -> None:
    """Run a scenario and print where its results are."""
    from fedsim.config import load_scenario
    from fedsim.runner import run_scenario

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)

    overrides = list(set_ or [])
    if engine is not None:
        overrides.append(f'engine.kind="{engine}"')
    try:
        loaded = load_scenario(scenario, overrides)
        run_dir = out or Path("runs") / f"{loaded.name}-{datetime.now():%Y%m%d-%H%M%S}"
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FedsimError(f"{run_dir}: run directory exists and is not empty (use --out)")
        columns = (
            TextColumn("round {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("acc {task.fields[accuracy]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("rounds", total=loaded.rounds, accuracy="-")

            def on_round_end(rnd: int, accuracy: float | None) -> None:
                shown = "-" if accuracy is None else f"{accuracy:.3f}"
                progress.update(task, completed=rnd, accuracy=shown)

            started = time.perf_counter()
            run_dir, summary = run_scenario(loaded, run_dir, on_round_end=on_round_end)
        accuracy = summary.get("final_accuracy")
        elapsed = time.perf_counter() - started
        line = f"{loaded.name}: {loaded.rounds} rounds in {elapsed:.1f} s"
        if accuracy is not None:
            line += f", final test accuracy {accuracy:.3f}"
        print(line)
        print(f"results: {run_dir}")
    except FedsimError as error:
        _fail(error)


@app.command("list")
def list_() -> None:
    """Print the strategies, participation patterns, datasets and models fedsim knows."""
    from fedsim.datasets import DATASET_NAMES
    from fedsim.models import MODEL_NAMES
    from fedsim.participation import PATTERN_NAMES
    from fedsim.strategies import available_strategies

    print(
        "strategies:     " + ", ".join(available_strategies()) + ", flwr:<Class>, file.py:<Class>"
    )
    print("participation:  " + ", ".join(PATTERN_NAMES))
    print("datasets:       " + ", ".join(DATASET_NAMES))
    print("models:         " + ", ".join(MODEL_NAMES) + ", file.py:<factory>")


def main() -> None:
    try:
        app()
    except FedsimError as error:  # raised outside a command's own handler
        console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
