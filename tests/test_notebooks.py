"""Every notebook in analysis/ runs top to bottom on a small sweep of its family.

The notebooks read the sweep directory from ``FEDSIM_RUNS``; the sweeps here are
written by formula (tests/helpers_fake_runs.py), with each family's diagnostics.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers_fake_runs import write_fake_sweep

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
FAMILIES = {
    "quickstart": ["strategy.name=fedavg,fedau"],
    "fedau_patterns": [
        "strategy.name=fedavg,fedau",
        "participation.pattern=bernoulli,markov,cyclic",
    ],
    "fedlaw": ["strategy.name=fedavg,fedlaw"],
    "gossip": ["strategy.name=gossip,gossip-vc"],
}


def test_every_notebook_is_tested() -> None:
    assert {path.stem for path in ANALYSIS.glob("*.ipynb")} == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_notebook_runs_top_to_bottom(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeds = "1" if name == "fedau_patterns" else "1,2"  # 6 runs, or 4 with a band over seeds
    sweep = write_fake_sweep(tmp_path / "runs", FAMILIES[name], seeds)
    monkeypatch.setenv("FEDSIM_RUNS", str(sweep))
    notebook = nbformat.read(ANALYSIS / f"{name}.ipynb", as_version=4)
    # "python3" is ipykernel's spec in this environment; jupyter_client starts it with
    # this interpreter, so the kernel imports the fedsim under test.
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(ANALYSIS)}},
    )
    client.execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert f"{sweep}: {6 if name == 'fedau_patterns' else 4} runs" in text, text
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 2, f"{name} drew {len(figures)} figures"


SMALL_SWEEP = """
import fedsim
_sweep = fedsim.sweep
def _small(scenario, **options):  # the notebook's own sweep call, as two tiny runs
    options.update(seeds=[1], overrides={"rounds": 2, "engine.kind": "inline",
                   "data.num_clients": 4, "participation.clients_per_round": 2})
    return _sweep(scenario, **options)
fedsim.sweep = _small
"""


@pytest.mark.slow
def test_quickstart_notebook_makes_its_sweep_with_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the sweep directory the quick-start notebook runs the sweep itself
    (``fedsim.sweep``, made small here), then reads it like any other."""
    sweep = tmp_path / "missing"
    monkeypatch.setenv("FEDSIM_RUNS", str(sweep))
    notebook = nbformat.read(ANALYSIS / "quickstart.ipynb", as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(SMALL_SWEEP))
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(ANALYSIS)}},
    ).execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert f"{sweep}: 2 runs, configurations differ in ['strategy.name']" in text, text
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        "strategy.name=fedau,seed=1",
        "strategy.name=fedavg,seed=1",
    ]
