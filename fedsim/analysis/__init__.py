"""Load runs and sweeps into pandas, and draw reports: the analysis API for notebooks.

It reads the files of run directories (their schema: :mod:`fedsim.results`) and
imports nothing that trains.

- :mod:`fedsim.analysis.runs`: one run (tables, events, summary, per-client facts);
- :mod:`fedsim.analysis.sweeps`: many runs as one frame, per-configuration results;
- :mod:`fedsim.analysis.clients`: per-client and fairness views (distribution across
  clients, worst 10 %, Jain's index, accuracy vs participation and data size);
- :mod:`fedsim.analysis.report`: the figures and tables of ``fedsim report``.

>>> # run = load_run("runs/quickstart-20261122-101500")
>>> # run.metrics.query("phase == 'central' and metric == 'accuracy'")
"""

from fedsim.analysis.clients import (
    client_distribution,
    client_table,
    client_values,
    fairness_summary,
    has_client_metric,
    jain_index,
    worst_fraction_mean,
)
from fedsim.analysis.runs import (
    Run,
    client_facts,
    flatten_config,
    last_client_values,
    load_run,
    load_runs,
    omega_vs_probability,
    participation_matrix,
    participation_probabilities,
    participation_rates,
)
from fedsim.analysis.sweeps import (
    PHASE_ORDER,
    SEED_COLUMN,
    config_columns,
    configuration_label,
    curve,
    find_runs,
    grid_order,
    has_runs,
    has_simulated_time,
    higher_is_better,
    load_sweep,
    round_times,
    run_results,
    server_rows,
    summary_table,
    sweep_manifest,
    varying_keys,
)
from fedsim.results import PARTICIPATION_STATES

__all__ = [
    "PARTICIPATION_STATES",
    "PHASE_ORDER",
    "SEED_COLUMN",
    "Run",
    "client_distribution",
    "client_facts",
    "client_table",
    "client_values",
    "config_columns",
    "configuration_label",
    "curve",
    "fairness_summary",
    "find_runs",
    "flatten_config",
    "grid_order",
    "has_client_metric",
    "has_runs",
    "has_simulated_time",
    "higher_is_better",
    "jain_index",
    "last_client_values",
    "load_run",
    "load_runs",
    "load_sweep",
    "omega_vs_probability",
    "participation_matrix",
    "participation_probabilities",
    "participation_rates",
    "round_times",
    "run_results",
    "server_rows",
    "summary_table",
    "sweep_manifest",
    "varying_keys",
    "worst_fraction_mean",
]
