"""The ``fedsim`` command line.

User mistakes (a bad scenario, a missing file) print one line and exit with
code 2; nothing a user can get wrong ends in a traceback. Ctrl-C during ``run``
or ``resume`` ends the run after the current round with a checkpoint and exits
with code 130, saying how to resume.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedsim.errors import FedsimError
from fedsim.flower_logs import quiet_flower
from fedsim.outputs import new_output_directory, output_directory, output_file, remove_if_empty

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

app = typer.Typer(
    help="fedsim: federated and decentralised training simulator (Flower clients on Ray).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _fail(error: FedsimError) -> None:
    # escape: messages name TOML tables ("[model]"), which rich would take for markup
    console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


INTERRUPTED_EXIT = 130  # the shell's code for a process ended by SIGINT


@contextlib.contextmanager
def _on_ctrl_c(handler: Callable[[int, object], None]) -> Iterator[None]:
    """``handler`` answers Ctrl-C inside the block; outside the main thread no handler can
    be set, and Ctrl-C keeps its default."""
    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _stop_on_ctrl_c() -> Iterator[threading.Event]:
    """First Ctrl-C sets the event (the run stops after its round); a second one aborts."""
    stop = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        console.print("stopping after this round (Ctrl-C again to abort now)", highlight=False)

    with _on_ctrl_c(handler):
        yield stop


def _interrupt_on_ctrl_c(requested: threading.Event) -> contextlib.AbstractContextManager[None]:
    """Ctrl-C raises KeyboardInterrupt, as by default, and sets ``requested``: Python
    drops an exception raised while a finaliser or ``__del__`` runs (Ray's object
    references have them), so a caller that checks the event between steps does not
    lose a Ctrl-C that landed there."""

    def handler(_signum: int, _frame: object) -> None:
        requested.set()
        raise KeyboardInterrupt

    return _on_ctrl_c(handler)


def _interrupted(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(INTERRUPTED_EXIT)


@app.command()
def run(
    scenario: Annotated[
        Path, typer.Argument(help="Scenario TOML file, or a Flower app project's folder.")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a scenario key: --set client.lr=0.05 (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/NAME-TIME).")
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(help="ray (fedsim's engine), inline (one worker, no Ray) or flower."),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's per-round INFO logs.")] = False,
    log: Annotated[
        list[str] | None,
        typer.Option(
            "--log",
            help="Also log to a tracker: jsonl, tensorboard, mlflow, wandb (repeatable; "
            "as [log] trackers).",
        ),
    ] = None,
    run_config: Annotated[
        list[str] | None,
        typer.Option(
            "--run-config",
            help='A Flower app\'s run-config overrides, as flwr run takes them: "k=v k2=v2" '
            "or a TOML file.",
        ),
    ] = None,
    overlay: Annotated[
        Path | None,
        typer.Option(
            "--scenario",
            help="For a Flower app: a fedsim TOML overlay ([participation], [engine], seed, "
            "data.num_clients).",
        ),
    ] = None,
) -> None:
    """Run a scenario (or a Flower app project) and print where its results are."""
    from fedsim.config import Scenario
    from fedsim.errors import RunInterrupted
    from fedsim.flower_project import is_flower_project
    from fedsim.simulation import api

    if not verbose:
        quiet_flower()
    trackers = api.tracker_overrides(log)
    if is_flower_project(scenario):
        _run_app(scenario, out, engine, run_config, overlay, [*(set_ or []), *trackers], verbose)
        return
    if run_config or overlay is not None:
        _fail(FedsimError(f"{scenario}: --run-config and --scenario are for Flower app folders"))

    overrides = [*(set_ or []), *trackers]
    if engine is not None:
        overrides.append(f'engine.kind="{engine}"')
    made: list[Path] = []
    try:
        loaded = Scenario.from_file(scenario, overrides)
        run_dir = out or api.default_run_dir(loaded)
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise FedsimError(f"{run_dir}: run directory exists and is not empty (use --out)")
        made = new_output_directory(run_dir, "--out")
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
            try:
                with _stop_on_ctrl_c() as stop:
                    finished = api.run(
                        loaded, out=run_dir, on_round_end=on_round_end, stop=stop, verbose=verbose
                    )
                    summary = finished.summary or {}
            except RunInterrupted:
                raise
            except FedsimError:
                if progress.tasks[task].completed == 0:
                    # A mistake found before the first round (a participation key, say) is
                    # one line: the empty bar is erased rather than left above it.
                    progress.live.transient = True
                    progress.live.stop()
                    progress.disable = True
                raise
        accuracy = summary.get("final_accuracy")
        elapsed = time.perf_counter() - started
        line = f"{loaded.name}: {loaded.rounds} rounds in {elapsed:.1f} s"
        if accuracy is not None:
            line += f", final test accuracy {accuracy:.3f}"
        print(line)
        print(f"results: {run_dir}")
    except RunInterrupted as error:
        _interrupted(str(error))
    except KeyboardInterrupt:
        _interrupted(f"aborted; results so far in {run_dir}; resume with: fedsim resume {run_dir}")
    except FedsimError as error:
        remove_if_empty(made)  # a mistake found before anything was written leaves no trace
        _fail(error)


def _run_app(
    project: Path,
    out: Path | None,
    engine: str | None,
    run_config: list[str] | None,
    overlay: Path | None,
    overrides: list[str] | None,
    verbose: bool,
) -> None:
    """``fedsim run DIR`` for a Flower app project, with a progress line."""
    from fedsim.errors import RunInterrupted
    from fedsim.flower_project import read_project
    from fedsim.simulation import api

    made: list[Path] = []
    run_dir = out
    try:
        read = read_project(project, run_config=run_config, overlay=overlay, overrides=overrides)
        run_dir = out or api.default_run_dir(read)
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise FedsimError(f"{run_dir}: run directory exists and is not empty (use --out)")
        made = new_output_directory(run_dir, "--out")
        started = time.perf_counter()
        # The bar appears with the first round: a mistake found while loading stays one line.
        bar = Progress(TextColumn("round {task.completed}"), console=console)
        task = bar.add_task("rounds", total=None)

        def on_round_end(rnd: int, _accuracy: float | None) -> None:
            if not bar.live.is_started:
                bar.start()
            bar.update(task, completed=rnd)

        try:
            with _stop_on_ctrl_c() as stop:
                finished = api.run_app(
                    project,
                    out=run_dir,
                    engine=engine,
                    run_config=run_config,
                    scenario=overlay,
                    overrides=overrides,
                    on_round_end=on_round_end,
                    stop=stop,
                    verbose=verbose,
                )
        finally:
            bar.stop()
        summary = finished.summary or {}
        elapsed = time.perf_counter() - started
        line = f"{read.name}: {summary.get('rounds', 0)} rounds in {elapsed:.1f} s"
        if summary.get("final_accuracy") is not None:
            line += f", final accuracy {summary['final_accuracy']:.3f}"
        print(line)
        print(f"results: {run_dir}")
    except RunInterrupted as error:
        _interrupted(str(error))
    except KeyboardInterrupt:
        _interrupted(f"aborted; results so far in {run_dir}")
    except FedsimError as error:
        remove_if_empty(made)
        _fail(error)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of an unfinished run.")],
    verbose: Annotated[bool, typer.Option(help="Show Flower's per-round INFO logs.")] = False,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Load a strategy state pickled under [checkpoint] allow_pickle = true "
            "(this runs code from the checkpoint: only for runs you made yourself).",
        ),
    ] = False,
) -> None:
    """Continue an interrupted run (Ctrl-C, kill -9, crash) from its last checkpoint.

    The results equal those of an uninterrupted run with the same scenario.
    """
    import tomllib

    from fedsim.errors import RunInterrupted
    from fedsim.results import SCENARIO_FILE
    from fedsim.simulation import api

    if not verbose:
        quiet_flower()
    try:
        try:
            rounds = int(tomllib.loads((run_dir / SCENARIO_FILE).read_text())["rounds"])
        except Exception:  # resume_run names the problem
            rounds = None
        with Progress(TextColumn("round {task.completed}/{task.total}"), console=console) as bar:
            task = bar.add_task("rounds", total=rounds)

            def on_round_end(rnd: int, _accuracy: float | None) -> None:
                bar.update(task, completed=rnd)

            try:
                with _stop_on_ctrl_c() as stop:
                    resumed = api.resume(
                        run_dir,
                        on_round_end=on_round_end,
                        stop=stop,
                        allow_pickle=allow_pickle,
                        verbose=verbose,
                    )
                    summary = resumed.summary or {}
            except FedsimError:
                bar.live.transient = bar.tasks[task].completed == 0
                raise
        line = f"{summary['name']}: {summary['rounds']} rounds done"
        if summary.get("final_accuracy") is not None:
            line += f", final test accuracy {summary['final_accuracy']:.3f}"
        print(line)
        print(f"results: {run_dir}")
    except RunInterrupted as error:
        _interrupted(str(error))
    except KeyboardInterrupt:
        _interrupted(f"aborted; resume again with: fedsim resume {run_dir}")
    except FedsimError as error:
        _fail(error)


@app.command()
def participation(
    scenario: Annotated[Path, typer.Argument(help="Scenario TOML file.")],
    rounds: Annotated[
        int | None, typer.Option(help="Rounds to draw (default: the scenario's rounds).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Heatmap PNG (default NAME-participation.png).")
    ] = None,
    csv: Annotated[
        Path | None, typer.Option(help="Write the full per-client table to this CSV file.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a scenario key: --set participation.a=0.1."),
    ] = None,
) -> None:
    """Draw who is reachable in each round and compare each client's rate with p_n.

    Nothing is trained: the data is partitioned as a run would (label-based rates
    need each client's label mix), the pattern is asked round by round, and the
    clients × rounds matrix is drawn as a heatmap.
    """
    from fedsim.analysis import participation_rates
    from fedsim.config import load_scenario
    from fedsim.participation.matrix import participation_matrix, save_participation_plot
    from fedsim.simulation.setup import build_participation, client_label_distribution

    try:
        loaded = load_scenario(scenario, list(set_ or []))
        num_rounds = loaded.rounds if rounds is None else rounds
        if num_rounds < 1:
            raise FedsimError(f"--rounds: expected an integer >= 1, got {num_rounds}")
        figure_path = out or Path(f"{loaded.name}-participation.png")
        if figure_path.suffix.lower() != ".png":
            raise FedsimError(f"--out: expected a .png file, got {str(figure_path)!r}")
        output_file(figure_path, "--out")
        if csv is not None:
            output_file(csv, "--csv")
        pattern, faults = build_participation(loaded, client_label_distribution(loaded))
        if getattr(pattern, "time_period", None) is not None:
            raise FedsimError(
                f"{loaded.source}: participation.clock: a pattern driven by simulated time "
                "depends on the run's rounds; draw it from a run's participation.parquet"
            )
        matrix = participation_matrix(pattern, num_rounds)
        table = participation_rates(matrix, getattr(pattern, "probabilities", None))
        size = f"{loaded.data.num_clients} clients x {num_rounds} rounds"
        title = f"{loaded.name}: {loaded.participation['pattern']}, {size}"
        try:
            figure_path.parent.mkdir(parents=True, exist_ok=True)
            save_participation_plot(matrix, figure_path, title=title)
            if csv is not None:
                csv.parent.mkdir(parents=True, exist_ok=True)
                table.to_csv(csv, index=False, float_format="%.6g")
        except OSError as error:
            raise FedsimError(f"{error.filename}: cannot write ({error.strerror})") from error
    except FedsimError as error:
        _fail(error)
    print(f"{title}, seed {loaded.seed}")
    print(_participation_summary(matrix, table, faults is not None))
    print(f"heatmap: {figure_path}")
    if csv is not None:
        print(f"table: {csv}")


def _participation_summary(
    matrix: np.ndarray, table: pd.DataFrame, faults: bool, full_up_to: int = 20, rows: int = 5
) -> str:
    """The text report of ``fedsim participation``: reachable clients per round, then each
    client's p_n and empirical rate (all clients up to ``full_up_to``, else summary statistics
    and the first and last ``rows`` clients)."""
    import pandas as pd

    per_round = matrix.sum(axis=0)
    lines = [
        f"reachable per round: mean {per_round.mean():.1f}, min {per_round.min()}, "
        f"max {per_round.max()} (before the strategy's sampling"
        + (" and in-round faults)" if faults else ")")
    ]
    has_p = bool(table["p_n"].notna().any())
    if has_p:
        error = (table["rate"] - table["p_n"]).abs()
        worst = int(error.to_numpy().argmax())
        lines.append(
            f"|rate - p_n|: mean {error.mean():.4f}, max {error.max():.4f} "
            f"(client {table['client'].iloc[worst]})"
        )
    else:
        lines.append("p_n: not defined by this pattern")
    fmt = "{:.4f}".format
    if len(table) <= full_up_to:
        lines.append(table.to_string(index=False, float_format=fmt, na_rep="-"))
        return "\n".join(lines)
    columns = ["p_n", "rate", "longest_gap"] if has_p else ["rate", "longest_gap"]
    stats = table[columns].agg(["mean", "min", "median", "max"])
    formats = {"p_n": fmt, "rate": fmt, "longest_gap": "{:.1f}".format}
    lines.append(stats.to_string(formatters={c: formats[c] for c in columns}))
    shown = pd.concat([table.head(rows), table.tail(rows)])
    text = shown.to_string(index=False, float_format=fmt, na_rep="-").splitlines()
    more = f"  ... {len(table) - 2 * rows} more clients (--csv FILE writes every row)"
    lines.extend([*text[: rows + 1], more, *text[rows + 1 :]])
    return "\n".join(lines)


@app.command()
def sweep(
    scenario: Annotated[Path, typer.Argument(help="Scenario TOML file.")],
    grid: Annotated[
        list[str] | None,
        typer.Option(help="A grid axis: --grid strategy.name=fedavg,fedau (repeatable)."),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Seeds, e.g. 1,2,3 (default: [sweep] seeds or the seed).")
    ] = None,
    parallel: Annotated[
        int, typer.Option(help="Runs at a time (worker processes sharing one Ray runtime).")
    ] = 1,
    out: Annotated[
        Path | None,
        typer.Option(help="Sweep directory (default runs/NAME-sweep); rerun to resume."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a scenario key in every run (repeatable)."),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's per-round INFO logs.")] = False,
) -> None:
    """Run a scenario over a grid of values and seeds, one run directory each.

    Complete runs are skipped, so running the same command again continues an
    interrupted sweep.
    """
    from fedsim import api
    from fedsim.simulation.sweep import SweepEvent

    if not verbose:
        quiet_flower()
    try:
        if out is not None and out.exists() and not out.is_dir():
            raise FedsimError(f"--out: {out} exists and is not a directory")
        plan = api.plan_sweep(scenario, grid=grid, seeds=seeds, overrides=list(set_ or []), out=out)
        output_directory(plan.directory, "--out")
        rounds = {point.name: point.scenario.rounds for point in plan.points}
        done_rounds = dict.fromkeys(rounds, 0)
        finished: list[str] = []
        columns = (
            TextColumn("run {task.fields[runs]}/{task.fields[count]}"),
            BarColumn(),
            TextColumn("{task.fields[current]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        started = time.perf_counter()
        requested = threading.Event()  # Ctrl-C
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(
                "sweep", total=sum(rounds.values()), runs=0, count=len(rounds), current=""
            )

            def on_event(event: SweepEvent) -> None:
                if requested.is_set():  # a Ctrl-C whose KeyboardInterrupt was dropped
                    raise KeyboardInterrupt
                name = event.point.name
                if event.kind == "round":
                    done_rounds[name] = event.round
                elif event.kind in ("skip", "done", "failed"):
                    done_rounds[name] = rounds[name]
                    finished.append(name)
                if event.kind == "failed":
                    progress.console.print(f"[red]failed:[/red] {name}: {event.error}")
                current = name if event.kind in ("start", "round") else ""
                if event.kind == "round" and event.accuracy is not None:
                    current += f"  acc {event.accuracy:.3f}"
                progress.update(
                    task,
                    completed=sum(done_rounds.values()),
                    runs=len(finished),
                    current=current,
                )

            try:
                with _interrupt_on_ctrl_c(requested):
                    outcome = api.sweep(plan, parallel=parallel, on_event=on_event, verbose=verbose)
            except KeyboardInterrupt:
                progress.stop()
                console.print(
                    f"interrupted: {len(finished)} of {len(rounds)} runs complete; "
                    "run the same command again to continue"
                )
                raise typer.Exit(130) from None
        elapsed = time.perf_counter() - started
        print(
            f"sweep: {len(rounds)} runs ({len(outcome.ran)} ran, {len(outcome.skipped)} "
            f"already complete, {len(outcome.failed)} failed) in {elapsed:.1f} s"
        )
        print(f"results: {plan.directory}")
        print(f"report:  fedsim report {plan.directory}")
        if outcome.failed:
            raise typer.Exit(1)
    except FedsimError as error:
        _fail(error)


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="A run or sweep directory.")],
    metric: Annotated[str, typer.Option(help="Metric to plot and summarise.")] = "accuracy",
    out: Annotated[
        Path | None, typer.Option(help="Report directory (default PATH/report).")
    ] = None,
    target: Annotated[
        float | None, typer.Option(help="Count the rounds each run takes to reach this value.")
    ] = None,
    phase: Annotated[
        str | None, typer.Option(help="Phase of the metric (default: central, else evaluate).")
    ] = None,
) -> None:
    """Plot a run or a sweep and write its summary table (markdown and CSV)."""
    from fedsim.analysis.report import write_report

    try:
        written = write_report(path, metric=metric, out=out, target=target, phase=phase)
    except FedsimError as error:
        _fail(error)
    print(written.markdown.read_text().split("\n\n![", 1)[0].rstrip())
    print()
    for file in [*written.figures.values(), written.markdown, written.csv]:
        print(f"wrote {file}")


@app.command()
def export(
    scenario: Annotated[Path, typer.Argument(help="Scenario TOML file.")],
    directory: Annotated[Path, typer.Argument(help="New (or empty) folder for the Flower app.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a scenario key: --set rounds=3 (repeatable)."),
    ] = None,
    superlink: Annotated[
        str, typer.Option(help="Address of the local-deployment SuperLink connection.")
    ] = "127.0.0.1:9093",
) -> None:
    """Write the scenario as a Flower app project that `flwr run` takes to a federation."""
    from fedsim.deployment.export import export_scenario

    try:
        written = export_scenario(scenario, directory, list(set_ or []), superlink=superlink)
    except FedsimError as error:
        _fail(error)
    print(f"wrote the Flower app {written}; how to run it: {written / 'README.md'}")


@app.command("list")
def list_() -> None:
    """Print the strategies, participation patterns, datasets and models fedsim knows."""
    from fedsim.data.datasets import DATASET_NAMES
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
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
