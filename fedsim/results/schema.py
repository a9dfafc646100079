"""The names of a run directory: its files, their columns, the event kinds of
``events.jsonl`` and the fields of ``summary.json``.

Both sides use these names: the writer (:mod:`fedsim.results.writer`) and every
reader (:mod:`fedsim.analysis`, ``fedsim report``, notebooks). Metric names and
phases of the long tables live in :mod:`fedsim.keys` with the message keys.

Layout of ``RUN_DIR``:

- ``scenario.toml``: the resolved scenario (after ``--set`` overrides);
- ``metrics.parquet``: one row per (round, client, phase, metric, value);
  ``client`` is empty (<NA>) for server-side rows;
- ``participation.parquet``: one row per (round, client) for every client
  that was reachable: available, selected, replied, failed, dropped, late;
- ``clients.parquet``: one row per client with the facts the analysis needs
  (training and local test examples, long-run participation rate p_n where the
  pattern has one, the label mix), written when the data is set up;
- ``devices.parquet``: with a ``[system]`` table only, one row per client: its
  ``compute`` speed (examples/s), ``download`` and ``upload`` bandwidth (Mbit/s) and
  ``latency`` (s), as drawn or read for the run;
- ``events.jsonl``: failures and other notable events, one JSON object a line;
- ``final_model.npz``: the final global model (name → array);
- the checkpoint (:mod:`fedsim.simulation.checkpoint`) while the run is unfinished;
- ``client_data/``: the clients' memory-mapped data store;
- ``summary.json``: written last: rounds done, final metrics, wall time.
"""

from __future__ import annotations

SCENARIO_FILE = "scenario.toml"
METRICS_FILE = "metrics.parquet"
PARTICIPATION_FILE = "participation.parquet"
CLIENTS_FILE = "clients.parquet"
DEVICES_FILE = "devices.parquet"
DEVICE_COLUMNS = ["client", "compute", "download", "upload", "latency"]
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"
FINAL_MODEL_FILE = "final_model.npz"
CLIENT_DATA_DIR = "client_data"
SWEEP_MANIFEST = "sweep.json"  # beside the runs of a sweep

METRIC_COLUMNS = ["round", "client", "phase", "metric", "value"]
PARTICIPATION_STATES = ("available", "selected", "replied", "failed", "dropped", "late")
PARTICIPATION_COLUMNS = ["round", "client", *PARTICIPATION_STATES]

# clients.parquet: these columns, then one column per class: LABEL_PREFIX + class index.
CLIENT_COLUMNS = ["client", "train_examples", "test_examples", "participation_probability"]
LABEL_PREFIX = "label_"

# The kinds of events.jsonl (the "event" field of each line).
EVENT_CLIENT_FAILED = "client_failed"
EVENT_EVALUATE_FAILED = "evaluate_failed"
EVENT_CHECKPOINT_FAILED = "checkpoint_failed"
EVENT_COHORT_FALLBACK = "cohort_fallback"
EVENT_RESUMED = "resumed"
EVENT_RUN_STOPPED = "run_stopped"
EVENT_PRIVACY_ACCOUNTING = "privacy_accounting"  # what the accountant assumed, once a run

# summary.json's fields.
SUMMARY_NAME = "name"
SUMMARY_ROUNDS = "rounds"
SUMMARY_ENGINE = "engine"
SUMMARY_WALL_TIME = "wall_time_s"
SUMMARY_FINAL_ACCURACY = "final_accuracy"
SUMMARY_FINAL_LOSS = "final_loss"
SUMMARY_CLIENT_ROUNDS = "client_rounds"
SUMMARY_COHORT_CLIENT_ROUNDS = "cohort_client_rounds"
SUMMARY_COHORT_EVALUATIONS = "cohort_evaluations"
SUMMARY_EPSILON = "epsilon"  # with [privacy]: the worst client's ε after the last round
SUMMARY_DELTA = "delta"
SUMMARY_PRIVACY_ACCOUNTING = "privacy_accounting"  # the statement of the event above
