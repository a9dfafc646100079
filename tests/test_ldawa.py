"""L-DAWA as a plugin: its math on hand-computed numbers, loading by path and by entry
point, a run from scenarios/ldawa.toml, and the strategy authoring guide's example."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedsim.analysis import load_run
from fedsim.config import load_scenario
from fedsim.errors import ScenarioError
from fedsim.plugins import load_object
from fedsim.simulation import run_scenario
from fedsim.strategies import StrategyInputs, build_strategy, resolve_strategy_class
from tests.helpers import FixedGrid, reply_from

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ROOT / "strategies"
SCENARIO = ROOT / "scenarios" / "ldawa.toml"
LDAWA = load_object("ldawa.py:LDAWA", base_dir=STRATEGIES, source="test", key="strategy.name")
module = sys.modules[LDAWA.__module__]
Segment = module.Segment
layer_cosines = module.layer_cosines
ldawa_aggregate = module.ldawa_aggregate

SQRT_HALF = 1 / math.sqrt(2)
# Global model: w = [1, 0], b = [2], n = 3 (a scalar counter).
# Client A replies w = [1, 1], b = [2], n = 5; client B w = [2, 0], b = [-1], n = 7.
#   δ_A^w = (1·1 + 1·0) / (√2 · 1) = 1/√2    δ_B^w = 2 / (2 · 1) = 1
#   δ_A^b = 1                               δ_B^b = (2 · -1) / (2 · 1) = -1
#   n is a scalar: not scaled (δ = 1)
GLOBAL = torch.tensor([1.0, 0.0, 2.0, 3.0])
CLIENTS = torch.tensor([[1.0, 1.0, 2.0, 5.0], [2.0, 0.0, -1.0, 7.0]])
SEGMENTS = [Segment(0, 2, True), Segment(2, 3, True), Segment(3, 4, False)]

INPUTS = StrategyInputs(
    num_clients=2, node_ids=[1, 2], seed=0, device="cpu", scenario_file="s.toml"
)


def test_cosine_similarity_per_layer() -> None:
    delta = layer_cosines(GLOBAL, CLIENTS, SEGMENTS)
    np.testing.assert_allclose(delta, [[SQRT_HALF, 1.0, 1.0], [1.0, -1.0, 1.0]], rtol=1e-6)


def test_default_divides_by_number_of_replies() -> None:
    new, _ = ldawa_aggregate(GLOBAL, CLIENTS, SEGMENTS)
    # w: (1/√2 · [1, 1] + 1 · [2, 0]) / 2;  b: (1 · 2 + (-1) · (-1)) / 2;  n: (5 + 7) / 2
    expected = [(SQRT_HALF + 2) / 2, SQRT_HALF / 2, 1.5, 6.0]
    np.testing.assert_allclose(new, expected, rtol=1e-6)


def test_similarity_option_divides_by_sum_of_cosines() -> None:
    new, _ = ldawa_aggregate(GLOBAL, CLIENTS, SEGMENTS, normalise="similarity")
    # w: (1/√2 · [1, 1] + [2, 0]) / (1/√2 + 1) = [3 - √2, √2 - 1];
    # b: Σδ = 1 - 1 = 0, so it falls back to dividing by |S_t| = 2: 1.5;  n: 12 / 2
    expected = [3 - math.sqrt(2), math.sqrt(2) - 1, 1.5, 6.0]
    np.testing.assert_allclose(new, expected, rtol=1e-6)


def test_zero_norm_layers_are_not_scaled_and_cosines_are_clipped_at_one() -> None:
    x = torch.tensor([0.0, 0.0, 0.1, 0.7, 0.3], dtype=torch.float32)
    clients = torch.tensor([[1.0, 2.0, 0.3, 2.1, 0.9], [0.0, 0.0, 0.1, 0.7, 0.3]])
    delta = layer_cosines(x, clients, [Segment(0, 2, True), Segment(2, 5, True)])
    assert delta[:, 0].tolist() == [1.0, 1.0]  # the global layer is zero
    assert (delta[:, 1] <= 1.0).all() and delta[:, 1].tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="normalise"):
        ldawa_aggregate(x, clients, [Segment(0, 5, True)], normalise="mean")


def record(w: list[float], b: list[float], n: int) -> ArrayRecord:
    return ArrayRecord(
        {
            "w": Array(np.asarray(w, dtype=np.float32)),
            "b": Array(np.asarray(b, dtype=np.float32)),
            "n": Array(np.asarray(n, dtype=np.int64)),
        }
    )


@pytest.mark.parametrize(
    ("normalise", "expected_w"),
    [("count", [(SQRT_HALF + 2) / 2, SQRT_HALF / 2]), ("similarity", [3 - 2**0.5, 2**0.5 - 1])],
)
def test_strategy_aggregates_flower_replies(
    flower_identity: None, normalise: str, expected_w: list[float]
) -> None:
    strategy = LDAWA(normalise=normalise)
    messages = list(
        strategy.configure_train(1, record([1, 0], [2], 3), ConfigRecord(), FixedGrid([21, 22]))
    )
    replies = [
        reply_from(messages[0], record([1, 1], [2], 5), 10.0),
        reply_from(messages[1], record([2, 0], [-1], 7), 30.0),  # example counts play no part
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), expected_w, rtol=1e-6)
    np.testing.assert_allclose(arrays["b"].numpy(), [1.5], rtol=1e-6)
    assert arrays["n"].numpy().dtype == np.int64 and int(arrays["n"].numpy()) == 6
    # ldawa_cos: mean δ over the scaled layers (w and b)
    cosines = {node: m["ldawa_cos"] for node, m in strategy.client_metrics.items()}
    assert cosines == pytest.approx({21: (SQRT_HALF + 1) / 2, 22: 0.0})


def test_loaded_by_path_relative_to_the_scenario_file() -> None:
    scenario = load_scenario(SCENARIO)
    assert scenario.strategy_name == "../strategies/ldawa.py:LDAWA"
    cls = resolve_strategy_class(
        scenario.strategy_name, source=scenario.source, base_dir=scenario.base_dir
    )
    assert cls.__name__ == "LDAWA" and cls.__module__.startswith("fedsim_plugin_")
    strategy = build_strategy(cls, scenario.strategy_options, inputs=INPUTS, source=scenario.source)
    assert strategy.normalise == "count"
    with pytest.raises(ScenarioError, match=r"strategy: expected valid options for LDAWA"):
        build_strategy(cls, {"normalise": "mean"}, inputs=INPUTS, source=scenario.source)


def test_registered_through_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guide's second way: an installed package declares it under fedsim.strategies."""
    (tmp_path / "my_ldawa.py").write_text((STRATEGIES / "ldawa.py").read_text())
    info = tmp_path / "my_ldawa-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-ldawa\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fedsim.strategies]\nldawa-ep = my_ldawa:LDAWA\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = resolve_strategy_class("ldawa-ep", source="s.toml", base_dir=tmp_path)
    assert cls.__name__ == "LDAWA" and cls.__module__ == "my_ldawa"


TINY = [
    "rounds=2",
    "data.num_clients=4",
    "participation.clients_per_round=3",
    "client.local_steps=2",
    "model.hidden=[16]",
    'engine.kind="inline"',  # the example strategy's part of a run is the same on Ray
]


def test_runs_from_the_scenario_file(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIO, [*TINY, "strategy.normalise=similarity"])
    run_dir, summary = run_scenario(scenario, tmp_path / "run")
    run = load_run(run_dir)
    cosines = run.metrics[(run.metrics.phase == "server") & (run.metrics.metric == "ldawa_cos")]
    assert len(cosines) == 2 * 3  # 3 replies in each of 2 rounds
    assert cosines.value.between(-1, 1).all() and (cosines.value > 0.5).all()
    assert summary["final_accuracy"] is not None
    initial = run.central("accuracy").loc[0]
    assert run.central("accuracy").loc[2] != initial  # the model moved


# --- the authoring guide -----------------------------------------------------------------

GUIDE = STRATEGIES / "README.md"


def included_files() -> dict[str, str]:
    pattern = re.compile(r"<!-- file: (\S+) -->\n```python\n(.*?)```", re.DOTALL)
    return dict(pattern.findall(GUIDE.read_text()))


def test_guide_shows_the_example_files_verbatim() -> None:
    blocks = included_files()
    assert set(blocks) == {"strategies/clipped_fedavg.py", "tests/test_clipped_fedavg.py"}
    for name, text in blocks.items():
        assert text == (ROOT / name).read_text(), f"{name} differs from its copy in the guide"


def test_guide_example_tests_pass() -> None:
    path = ROOT / "tests" / "test_clipped_fedavg.py"
    spec = importlib.util.spec_from_file_location("guide_example_tests", path)
    assert spec is not None and spec.loader is not None
    guide_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guide_tests)
    names = [name for name in dir(guide_tests) if name.startswith("test_")]
    assert len(names) == 2
    for name in names:
        getattr(guide_tests, name)()


def test_guide_example_is_usable_by_name_from_a_scenario(tmp_path: Path) -> None:
    scenario = load_scenario(
        ROOT / "scenarios" / "quickstart.toml",
        ["strategy.name=../strategies/clipped_fedavg.py:ClippedFedAvg", "strategy.max_norm=0.5"],
    )
    cls = resolve_strategy_class(
        scenario.strategy_name, source=scenario.source, base_dir=scenario.base_dir
    )
    strategy = build_strategy(cls, scenario.strategy_options, inputs=INPUTS, source=scenario.source)
    assert strategy.max_norm == 0.5
    with pytest.raises(ScenarioError, match=r"strategy\.clip: expected an option of ClippedFedAvg"):
        build_strategy(cls, {"clip": 1.0}, inputs=INPUTS, source=scenario.source)
