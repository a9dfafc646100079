"""A scenario across a real two-node Ray cluster (with token authentication) gives
the single-machine result.

``tests/fixtures/cluster_run.py`` starts ``ray.cluster_utils.Cluster`` (a head
and a second node) in a subprocess, so it does not meet this session's Ray
runtime, and runs the scenario through ``engine.ray_address``. The ClientApp
reports the Ray node of every call: both nodes must have served clients, and
the final model must equal, bit for bit, the one from a local run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from fedsim.analysis import load_run
from fedsim.config import load_scenario
from fedsim.simulation import run_scenario

FIXTURES = Path(__file__).parent / "fixtures"
APP = FIXTURES / "faulty_client_app.py"


@pytest.mark.slow
def test_two_node_cluster_places_actors_on_both_and_agrees(
    tmp_path: Path, ray_session: None
) -> None:
    scenario = {
        "name": "cluster",
        "seed": 7,
        "rounds": 3,
        "data": {"num_clients": 6},
        "model": {"factory": f"{APP}:make_model"},
        "client": {"app": f"{APP}:app", "config": {"report_node": True}},
        "participation": {"pattern": "uniform", "clients_per_round": 4},
        "strategy": {"name": "fedau"},
        "engine": {"num_actors": 2, "num_cpus_per_client": 1.0, "timeout": 120.0},
    }
    path = tmp_path / "cluster.toml"
    path.write_text(tomli_w.dumps(scenario))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, str(FIXTURES / "cluster_run.py"), str(path), str(tmp_path / "cluster")],
        capture_output=True,
        text=True,
        timeout=500,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cluster = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(cluster["nodes"]) == 2
    assert cluster["auth"] == "token"  # the fixture checked a call without the token fails
    run = load_run(tmp_path / "cluster")
    served = run.metrics[(run.metrics.metric == "ray_node") & run.metrics.client.notna()]
    assert set(served.value) == set(cluster["nodes"])  # actors ran on both nodes
    assert len(served) == 3 * 4

    local, _ = run_scenario(load_scenario(path), tmp_path / "local")
    on_cluster = np.load(tmp_path / "cluster" / "final_model.npz")
    on_one = np.load(local / "final_model.npz")
    for name in on_one.files:
        assert on_cluster[name].tobytes() == on_one[name].tobytes(), name
