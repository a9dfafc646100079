"""fedsim without Ray: the inline engine runs, checkpoints and resumes where Ray is missing.

A GPU machine may have torch but no Ray (issue 14). Each ``fedsim`` here runs in a
process whose first import hook makes ``import ray`` fail as it does where Ray is not
installed, so a module on the inline path that imports Ray (at its top, or when it
checkpoints or loads a plugin file) fails these tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w

from fedsim.simulation.checkpoint import CHECKPOINT_FILE, load_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
APP = FIXTURES / "faulty_client_app.py"

BLOCK_RAY = textwrap.dedent(
    """
    import sys

    class NoRay:
        def find_spec(self, name, path=None, target=None):
            if name == "ray" or name.startswith("ray."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    assert "ray" not in sys.modules
    sys.meta_path.insert(0, NoRay())
    """
)
FEDSIM_WITHOUT_RAY = BLOCK_RAY + "from fedsim.cli import main\nsys.argv[0] = 'fedsim'\nmain()\n"


def fedsim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``fedsim ARGS`` in a process where Ray cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", FEDSIM_WITHOUT_RAY, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_scenario(path: Path, scenario: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(scenario))
    return path


def events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_the_hook_makes_ray_unimportable_and_the_cli_starts(tmp_path: Path) -> None:
    blocked = subprocess.run(
        [sys.executable, "-c", BLOCK_RAY + "import ray\n"], capture_output=True, text=True
    )
    assert blocked.returncode != 0 and "No module named 'ray'" in blocked.stderr
    listed = fedsim("list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "fedavg" in listed.stdout + listed.stderr


@pytest.mark.slow
def test_inline_run_checkpoints_crashes_and_resumes_without_ray(tmp_path: Path) -> None:
    """A plugin ClientApp and model, Flower's FedAdam (its state is pickled attributes),
    a checkpoint every round, the process killed in round 3, ``fedsim resume``: the same
    final model as a run never stopped."""
    flag = tmp_path / "crash-once"
    scenario = {
        "name": "no-ray",
        "seed": 3,
        "rounds": 4,
        "data": {"num_clients": 3},
        "model": {"factory": f"{APP}:make_model"},
        "client": {
            "app": f"{APP}:app",
            "config": {"die_partition": 1, "die_round": 3, "die_once_file": str(flag)},
        },
        "participation": {"pattern": "always"},
        "strategy": {"name": "flwr:FedAdam", "eta": 0.05},
        "engine": {"kind": "inline"},
        "checkpoint": {"every": 1},
    }
    path = write_scenario(tmp_path / "s.toml", scenario)

    reference = fedsim("run", str(path), "--out", "reference", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr

    flag.touch()
    crashed = fedsim("run", str(path), "--out", "crashed", cwd=tmp_path)
    assert crashed.returncode == 1, crashed.stderr  # the ClientApp's os._exit(1) in round 3
    assert not flag.exists()
    assert load_checkpoint(tmp_path / "crashed").round == 2

    resumed = fedsim("resume", "crashed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    run_dir = tmp_path / "crashed"
    assert (run_dir / "summary.json").is_file() and not (run_dir / CHECKPOINT_FILE).exists()
    assert [e["event"] for e in events(run_dir)] == ["resumed"]
    assert not events(tmp_path / "reference")
    a, b = np.load(run_dir / "final_model.npz"), np.load(tmp_path / "reference/final_model.npz")
    assert a.files == b.files
    for name in a.files:
        assert a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.slow
def test_builtin_client_trains_on_digits_inline_without_ray(tmp_path: Path) -> None:
    """fedsim's own ClientApp, data set and model: what the GPU benchmark runs."""
    scenario = {
        "name": "no-ray-digits",
        "seed": 1,
        "rounds": 3,
        "data": {"dataset": "digits", "num_clients": 4, "partition": "iid"},
        "model": {"name": "mlp", "hidden": [8]},
        "client": {"local_steps": 2, "batch_size": 8, "lr": 0.1},
        "participation": {"pattern": "uniform", "clients_per_round": 2},
        "strategy": {"name": "fedau"},
        "checkpoint": {"every": 1},
    }
    path = write_scenario(tmp_path / "digits.toml", scenario)
    done = fedsim("run", str(path), "--engine", "inline", "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["engine"] == "inline"
    assert not [e for e in events(run_dir) if e["event"] == "checkpoint_failed"]
    assert (run_dir / "metrics.parquet").is_file() and (run_dir / "final_model.npz").is_file()
