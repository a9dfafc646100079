"""The one reader of scenario tables: its checks and the exact messages callers rely on."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedsim.errors import ScenarioError
from fedsim.options import Options


def message(call) -> str:
    with pytest.raises(ScenarioError) as caught:
        call()
    return str(caught.value)


def test_integers_are_never_booleans_and_respect_the_minimum() -> None:
    opts = Options({"n": True, "m": 0, "k": 3}, source="run.toml", prefix="data")
    assert opts.integer("k", None, minimum=1) == 3
    assert opts.integer("absent", 7) == 7
    assert message(lambda: opts.integer("n", 1)) == (
        "run.toml: data.n: expected an integer, got True"
    )
    assert message(lambda: opts.integer("m", 1, minimum=1)) == (
        "run.toml: data.m: expected an integer >= 1, got 0"
    )
    assert message(lambda: opts.integer("absent", None)) == (
        "run.toml: data.absent: expected an integer (this key is required)"
    )
    assert opts.optional_integer("absent", minimum=1) is None


def test_numbers_reject_booleans_nan_and_out_of_range_values_with_the_bounds_as_given() -> None:
    opts = Options({"b": False, "nan": math.nan, "inf": math.inf, "x": 1.0}, source="s.toml")
    assert message(lambda: opts.number("b", 0.0)) == "s.toml: b: expected a number, got False"
    assert message(lambda: opts.number("nan", 0.0)) == "s.toml: nan: expected a number, got nan"
    assert opts.number("inf", 0.0, minimum=0.0) == math.inf
    assert message(lambda: opts.number("inf", 0.0, finite=True)) == (
        "s.toml: inf: expected a number, got inf"
    )
    assert message(lambda: opts.number("x", 0.0, minimum=0.0, maximum=1.0, open_maximum=True)) == (
        "s.toml: x: expected a number in [0.0, 1.0), got 1.0"
    )
    assert message(lambda: opts.number("x", 0.0, minimum=1, open_minimum=True)) == (
        "s.toml: x: expected a number > 1, got 1.0"
    )
    assert message(lambda: opts.probability("inf", 0.5)) == (
        "s.toml: inf: expected a number in [0, 1], got inf"
    )


def test_expected_replaces_the_text_of_every_failure() -> None:
    opts = Options({"t": True, "low": 5}, source="s.toml", prefix="data")
    assert message(lambda: opts.integer("t", 1, minimum=10, expected="an integer >= 10")) == (
        "s.toml: data.t: expected an integer >= 10, got True"
    )
    assert message(lambda: opts.number("low", 1.0, minimum=50.0, expected="a number > 50.0")) == (
        "s.toml: data.low: expected a number > 50.0, got 5"
    )


def test_text_choices_booleans_and_the_required_note() -> None:
    opts = Options(
        {"kind": "gpu", "n": 3, "empty": "", "flag": 1},
        source="s.toml",
        prefix="engine",
        required="required for dataset 'npz'",
    )
    assert message(lambda: opts.text("kind", "ray", choices=("ray", "inline"))) == (
        "s.toml: engine.kind: expected one of ray, inline, got 'gpu'"
    )
    assert message(lambda: opts.text("n", "x")) == "s.toml: engine.n: expected a string, got 3"
    assert opts.text("empty", "x") == ""
    assert message(lambda: opts.text("empty", "x", nonempty=True)) == (
        "s.toml: engine.empty: expected a string, got ''"
    )
    assert message(lambda: opts.text("absent", None)) == (
        "s.toml: engine.absent: expected a string (required for dataset 'npz')"
    )
    assert message(lambda: opts.boolean("flag", False)) == (
        "s.toml: engine.flag: expected true or false, got 1"
    )


def test_choice_quotes_strings_and_never_takes_a_boolean_for_a_number() -> None:
    opts = Options({"norm": "layer", "groups": True, "g": 4.0}, source="s.toml", prefix="model")
    assert message(lambda: opts.choice("norm", "batch", ("batch", "group"))) == (
        's.toml: model.norm: expected one of "batch", "group", got \'layer\''
    )
    assert message(lambda: opts.choice("groups", 2, (1, 2))) == (
        "s.toml: model.groups: expected one of 1, 2, got True"
    )
    groups = opts.choice("g", 2, (1, 2, 4))
    assert groups == 4 and isinstance(groups, int)


def test_int_lists_and_paths_relative_to_the_base_dir(tmp_path: Path) -> None:
    (tmp_path / "data.npz").write_bytes(b"")
    opts = Options(
        {"hidden": [8, True], "path": "data.npz", "folder": "missing"},
        source="s.toml",
        prefix="data",
        base_dir=tmp_path,
    )
    assert opts.int_list("absent", [200, 200]) == [200, 200]
    assert message(lambda: opts.int_list("hidden", [1])) == (
        "s.toml: data.hidden: expected a list of integers >= 1, got [8, True]"
    )
    assert opts.path("path", "an .npz file", folder=False) == tmp_path / "data.npz"
    assert message(lambda: opts.path("folder", "a folder", folder=True)) == (
        f"s.toml: data.folder: expected a path to a folder, got {str(tmp_path / 'missing')!r}"
    )
    assert message(lambda: opts.path("absent", "a folder", folder=True)) == (
        "s.toml: data.absent: expected a path to a folder (this key is required)"
    )


def test_only_lists_sets_sorted_and_sequences_in_order() -> None:
    opts = Options({"zeta": 1}, source="s.toml")
    assert message(lambda: opts.only({"b", "a"})) == (
        "s.toml: zeta: expected one of the known keys (a, b)"
    )
    assert message(lambda: opts.only(("b", "a"), "an option of model 'mlp' ({known})")) == (
        "s.toml: zeta: expected an option of model 'mlp' (b, a)"
    )
    assert message(lambda: opts.only((), "a key of x ({known})", none="none besides name")) == (
        "s.toml: zeta: expected a key of x (none besides name)"
    )


def test_child_readers_keep_the_dotted_prefix_and_the_subclass() -> None:
    class Sub(Options):
        pass

    opts = Sub({"latency": {"params": {"sigma": -1}}, "bad": 3}, source="s.toml", prefix="p")
    params = opts.child("latency").child("params")
    assert isinstance(params, Sub)
    assert message(lambda: params.number("sigma", None, minimum=0)) == (
        "s.toml: p.latency.params.sigma: expected a number >= 0, got -1"
    )
    assert message(lambda: opts.child("bad")) == "s.toml: p.bad: expected a table, got 3"
    assert opts.subtable("absent") == {}


def test_the_four_callers_keep_their_unknown_key_messages(tmp_path: Path) -> None:
    from fedsim.config import scenario_from_dict
    from fedsim.data.datasets import load_dataset
    from fedsim.models import build_model
    from fedsim.participation import build_pattern

    base = {"rounds": 1, "data": {"dataset": "digits", "num_clients": 2}, "model": {"name": "mlp"}}
    assert message(lambda: scenario_from_dict({**base, "bogus": 1}, source="s.toml")) == (
        "s.toml: bogus: expected one of the known keys (checkpoint, client, data, engine, "
        "evaluate, log, model, name, participation, privacy, rounds, seed, strategy, sweep, system)"
    )
    assert message(
        lambda: load_dataset(
            "digits",
            {"x": 1},
            seed=0,
            num_clients=1,
            test_fraction=0.2,
            source="s.toml",
            base_dir=tmp_path,
        )
    ) == (
        "s.toml: data.x: expected a key that dataset 'digits' takes "
        "(none besides the common [data] keys)"
    )
    assert (
        message(
            lambda: build_model(
                {"name": "resnet20", "x": 1},
                input_shape=(3, 8, 8),
                num_classes=10,
                seed=0,
                source="s.toml",
                base_dir=tmp_path,
            )
        )
        == "s.toml: model.x: expected an option of model 'resnet20' (norm, groups)"
    )
    assert message(
        lambda: build_pattern(
            {"pattern": "cyclic", "bogus": 1},
            num_clients=2,
            seed=0,
            label_distribution=None,
            source="s.toml",
            base_dir=tmp_path,
        )
    ) == (
        's.toml: participation.bogus: expected one of the keys of pattern "cyclic" (deadline, '
        "dropout, latency, p_alpha, p_mean, p_min, pattern, period, rates)"
    )
