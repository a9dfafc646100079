"""fedsim.paper_tables on hand-written runs whose every number is known.

Four runs — methods ``new`` and ``old`` at seeds 1 and 2, accuracy at rounds 0 to 3 from
:data:`ACCURACY` — are written with :class:`fedsim.results.RunWriter`; the tables' cells
(mean ± sample std over seeds, paired differences by seed) are checked against values
worked out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim.paper_tables import (
    BEGIN,
    END,
    Invocation,
    Sweep,
    argument_parser,
    differences_of,
    grouped_markdown,
    mean_std,
    paired_differences,
    parse_seeds,
    pivot_markdown,
    run_table,
    splice,
    wins,
)
from fedsim.results import RunWriter

# (method, seed) → accuracy at rounds 0, 1, 2, 3 (round 0: the initial model)
ACCURACY = {
    ("new", 1): [0.9, 0.3, 0.6, 0.5],
    ("new", 2): [0.1, 0.4, 0.7, 0.7],
    ("old", 1): [0.9, 0.2, 0.4, 0.4],
    ("old", 2): [0.1, 0.5, 0.6, 0.75],
}
WALL = {("new", 1): 10.0, ("new", 2): 14.0, ("old", 1): 8.0, ("old", 2): 9.0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("paper")
    labelled = {}
    for (method, seed), values in ACCURACY.items():
        run_dir = root / f"{method}-s{seed}"
        scenario = {"name": "t", "seed": seed, "rounds": 3, "strategy": {"name": method}}
        writer = RunWriter(run_dir, scenario)
        for rnd, value in enumerate(values):
            writer.metric(rnd, None, "central", "accuracy", value)
            writer.metric(rnd, 0, "train", "loss", 1.0 - value)  # a client row: ignored
        writer.finish({"rounds": 3, "wall_time_s": WALL[method, seed]})
        labelled[run_dir] = {"method": method, "pattern": "p"}
    return labelled


@pytest.fixture(scope="module")
def table(runs: dict[Path, dict[str, str]]) -> pd.DataFrame:
    return run_table(runs, "accuracy", rounds=(1, None), targets=[0.6])


def test_run_table_reads_each_run(table: pd.DataFrame) -> None:
    row = table.set_index(["method", "seed"]).loc[("new", 1)]
    assert row["final"] == pytest.approx(0.5)
    assert row["best"] == pytest.approx(0.6)  # round 0's 0.9 is outside the rounds kept
    assert row["best_round"] == 2
    assert row["rounds_to_0.6"] == 2
    assert row["wall_s"] == 10.0 and row["run_rounds"] == 3
    assert table.set_index(["method", "seed"]).loc[("old", 1), "rounds_to_0.6"] != 0.6
    assert np.isnan(table.set_index(["method", "seed"]).loc[("old", 1), "rounds_to_0.6"])


def test_mean_std_cell_on_hand_computed_numbers(table: pd.DataFrame) -> None:
    # new: finals 0.5 and 0.7 → mean 0.6, sample std sqrt(2 · 0.1²) = 0.1414
    text = grouped_markdown(
        table, ["method"], {"final": lambda g: mean_std(g["final"]), "seeds": lambda g: str(len(g))}
    )
    assert text.splitlines() == [
        "| method | final | seeds |",
        "|---|---|---|",
        "| new | 0.600 ± 0.141 | 2 |",
        "| old | 0.575 ± 0.247 | 2 |",
    ]
    assert mean_std([0.5, 0.7], digits=1, scale=100) == "60.0 ± 14.1"
    assert mean_std([0.25]) == "0.250" and mean_std([0.25], lone_std=True) == "0.250 ± 0.000"


def test_pivot_shows_every_cell(table: pd.DataFrame) -> None:
    text = pivot_markdown(
        table,
        "wall_s",
        rows="method",
        columns="pattern",
        row_order=["new", "old", "absent"],
        column_order=["p", "q"],
        cell=lambda v: mean_std(v, digits=0),
        corner="method \\ pattern",
    )
    assert text.splitlines() == [
        "| method \\ pattern | p | q |",
        "|---|---|---|",
        "| new | 12 ± 3 | — |",
        "| old | 8 ± 1 | — |",
        "| absent | — | — |",
    ]


def test_paired_differences_by_seed(table: pd.DataFrame) -> None:
    diffs = paired_differences(table, "final", method="method", subject="new", by=["pattern"])
    # seed 1: 0.5 − 0.4 = +0.1; seed 2: 0.7 − 0.75 = −0.05 → mean +0.025, ahead on 1 of 2
    assert diffs[["pattern", "baseline", "seed"]].values.tolist() == [
        ["p", "old", 1],
        ["p", "old", 2],
    ]
    gaps = differences_of(diffs, "old", pattern="p")
    assert gaps == pytest.approx([0.1, -0.05])
    assert wins(gaps) == "1/2"
    assert mean_std(gaps) == "0.025 ± 0.106"
    text = pivot_markdown(
        diffs,
        "difference",
        rows="pattern",
        columns="baseline",
        row_order=["p"],
        column_order=["old"],
        cell=lambda v: f"{np.mean(v) * 100:+.1f} ({wins(np.asarray(v))})",
    )
    assert text.splitlines()[-1] == "| p | +2.5 (1/2) |"


def test_paired_differences_skip_unpaired_seeds(table: pd.DataFrame) -> None:
    partial = table[~((table["method"] == "old") & (table["seed"] == 2))]
    diffs = paired_differences(partial, "final", method="method", subject="new")
    assert diffs["seed"].tolist() == [1]


def test_invocation_is_kept_beside_the_runs(tmp_path: Path) -> None:
    assert Invocation.last(tmp_path) is None
    ran = Invocation("2026-01-01 10:00 UTC", "2026-01-01 10:05 UTC", 300.0, 4, 1.5, 2.0)
    ran.save(tmp_path)
    assert Invocation.last(tmp_path) == ran
    (tmp_path / "make_table.json").write_text(json.dumps({"grid_wall_s": 3.0}))
    assert Invocation.last(tmp_path) is None  # an older script's file is not misread


def test_command_line_and_sweep_command() -> None:
    args = argument_parser("d", seeds=(1, 2, 3), runs=Path("runs/x"), doc=Path("x.md"))
    parsed = args.parse_args(["--seeds", "1,2", "3", "--set", "rounds=4"])
    assert parse_seeds(parsed.seeds) == [1, 2, 3] and parsed.overrides == ["rounds=4"]
    assert parse_seeds(args.parse_args([]).seeds) == [1, 2, 3]
    sweep = Sweep(Path("scenarios/x.toml"), "x", ("strategy.name=a,b",), ('model.name="mlp"',))
    assert sweep.command(Path("runs/x"), [1, 2], ["rounds=4"]) == (
        "fedsim sweep scenarios/x.toml --set 'model.name=\"mlp\"' --set rounds=4 "
        "--grid strategy.name=a,b --seeds 1,2 --out runs/x/x"
    )


def test_splice_keeps_the_hand_written_text() -> None:
    page = f"# T\n\nintro\n\n{BEGIN}\nold\n{END}\n\noutro\n"
    assert splice(page, "new", title="T") == f"# T\n\nintro\n\n{BEGIN}\nnew\n{END}\n\noutro\n"
    assert splice(None, "new", title="T") == f"# T\n\n{BEGIN}\nnew\n{END}\n"
