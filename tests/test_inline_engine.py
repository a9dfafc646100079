"""The inline engine (``engine.kind = "inline"``): the Ray engine's results, bit for bit,
served in the driver process; its faults and its limits.

The toy ClientApp is tests/fixtures/faulty_client_app.py (see tests/helpers.py),
so final models are computed by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import MessageType

from fedsim.analysis import load_run
from fedsim.config import scenario_from_dict
from fedsim.engine.identity import node_id_of
from fedsim.engine.inline_grid import InlineGrid
from fedsim.errors import ScenarioError
from fedsim.simulation import run_scenario
from tests.helpers import assert_final, expected_model, failures, run_toy, toy_scenario

INLINE = {"kind": "inline", "num_actors": 1}


def test_raising_client_is_a_failure_and_the_round_goes_on(tmp_path: Path) -> None:
    run_dir = run_toy(tmp_path, toy_scenario(2, INLINE, raise_partition=1))
    # Replies from partitions 0, 2, 3: round 1 steps 1, 3, 4; round 2 steps 2, 4, 5.
    assert_final(run_dir, expected_model(tmp_path, [8 / 3, 11 / 3]))
    assert [(r, c) for r, c, _ in failures(run_dir)] == [(1, 1), (2, 1)]
    assert all("RuntimeError: partition 1 refuses to train" in why for *_, why in failures(run_dir))


def test_messages_past_the_timeout_get_no_reply(tmp_path: Path) -> None:
    """The straggler (partition 1, round 1) overruns: it and the clients after it in
    that round are failures; round 2 has everyone, with the stragglers' calls uncounted
    for the clients that never ran."""
    scenario = toy_scenario(
        2, {**INLINE, "timeout": 0.5}, sleep_partition=1, sleep_round=1, sleep_s=1.0
    )
    run_dir = run_toy(tmp_path, scenario)
    late = "no reply within engine.timeout (0.5 s)"
    assert failures(run_dir) == [(1, 1, late), (1, 2, late), (1, 3, late)]
    # Round 1: partition 0 alone (step 1). Round 2: partitions 0..3 with 1, 1, 0, 0
    # earlier calls (partition 1's overrun call counted in its Context): steps 2, 3, 3, 4.
    assert_final(run_dir, expected_model(tmp_path, [1.0, 3.0]))


def digits(kind: str) -> dict[str, Any]:
    return {
        "name": f"digits-{kind}",
        "seed": 4,
        "rounds": 3,
        "data": {
            "dataset": "digits",
            "num_clients": 6,
            "partition": "dirichlet",
            "alpha": 0.5,
            "client_test_fraction": 0.2,
        },
        "model": {"name": "mlp", "hidden": [16]},
        "client": {"local_steps": 3, "batch_size": 8, "lr": 0.1},
        "participation": {"pattern": "bernoulli", "rates": 0.6, "dropout": 0.2},
        "strategy": {"name": "fedau"},
        "evaluate": {"federated": True},
        "engine": {"kind": kind, "num_actors": 1},
    }


@pytest.mark.slow
def test_inline_results_equal_the_ray_engine_bit_for_bit(tmp_path: Path, ray_session: None) -> None:
    runs = {}
    for kind in ("ray", "inline"):
        scenario = scenario_from_dict(digits(kind), source=f"{kind}.toml", base_dir=tmp_path)
        runs[kind], _ = run_scenario(scenario, tmp_path / kind)
    a, b = (np.load(runs[k] / "final_model.npz") for k in ("ray", "inline"))
    assert all(a[name].tobytes() == b[name].tobytes() for name in a.files)
    ray_run, inline_run = load_run(runs["ray"]), load_run(runs["inline"])
    untimed = [
        r.metrics[r.metrics.phase != "timing"].reset_index(drop=True) for r in (ray_run, inline_run)
    ]
    pd.testing.assert_frame_equal(*untimed)
    pd.testing.assert_frame_equal(ray_run.participation, inline_run.participation)
    assert set(inline_run.metrics.phase) >= {"train", "evaluate", "central"}


def test_each_message_gets_its_own_content(flower_identity: None) -> None:
    """A ClientApp that edits its message's arrays cannot change what the next one gets."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        arrays = message.content.array_records["arrays"]
        seen = float(arrays["w"].numpy()[0])
        arrays["w"] = Array(np.array([seen + 100.0], np.float32))
        reply = RecordDict({"metrics": MetricRecord({"seen": seen})})
        return Message(reply, reply_to=message)

    grid = InlineGrid(app, num_clients=3)
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.array([1.0], np.float32))}),
            "config": ConfigRecord({"server-round": 1}),
        }
    )
    messages = [
        grid.create_message(content, MessageType.TRAIN, node_id_of(c), "1") for c in range(3)
    ]
    replies = list(grid.send_and_receive(messages))
    assert [r.content.metric_records["metrics"]["seen"] for r in replies] == [1.0, 1.0, 1.0]
    assert [r.metadata.src_node_id for r in replies] == [node_id_of(c) for c in range(3)]


@pytest.mark.parametrize(
    ("engine", "key"),
    [({"num_actors": 2}, "num_actors"), ({"ray_address": "auto"}, "ray_address")],
)
def test_inline_refuses_ray_settings_in_one_line(
    tmp_path: Path, engine: dict[str, Any], key: str
) -> None:
    raw = digits("inline")
    raw["engine"] = {"kind": "inline", **engine}
    with pytest.raises(ScenarioError) as caught:
        scenario_from_dict(raw, source="s.toml", base_dir=tmp_path)
    message = str(caught.value)
    assert message.startswith("s.toml: engine.") and key in message and "inline" in message
    assert "\n" not in message
