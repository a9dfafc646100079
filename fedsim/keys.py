"""Every record, config and metric key fedsim puts in a Flower message or a results table.

Flower messages are stringly typed; keeping the strings in one module means a
typo is a NameError, and a plugin author has one place to look.
"""

from __future__ import annotations

# RecordDict entries of train/evaluate messages (the names Flower's strategies use).
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# ConfigRecord entries sent by the server.
SERVER_ROUND = "server-round"

# MetricRecord entries replied by clients.
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train_loss"
EVAL_LOSS = "eval_loss"
EVAL_ACCURACY = "eval_accuracy"

# Context.node_config entries, exactly as Flower's simulation engine sets them.
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"

# Context.state entries the fedsim ClientApp keeps between rounds.
STREAM_STATE = "fedsim.stream"

# Results tables.
PHASE_TRAIN = "train"
PHASE_EVALUATE = "evaluate"
PHASE_CENTRAL = "central"
PHASE_SERVER = "server"
PHASE_TIMING = "timing"
PHASE_SYSTEM = "system"  # simulated time, with a [system] table only
PHASE_PRIVACY = "privacy"  # with a [privacy] table only

# Simulated-time rows (phase "system"): per round on the server, per client-round.
ROUND_START_S = "round_start_s"
ROUND_END_S = "round_end_s"
DOWNLOAD_S = "download_s"
COMPUTE_S = "compute_s"
UPLOAD_S = "upload_s"
LATENCY_S = "latency_s"
ARRIVAL_S = "arrival_s"  # download + compute + upload + latency, after the round's start
CLIENT_TIME_METRICS = (DOWNLOAD_S, COMPUTE_S, UPLOAD_S, LATENCY_S)

# Metric names of the results tables that fedsim itself computes.
METRIC_LOSS = "loss"  # central evaluation
METRIC_ACCURACY = "accuracy"  # central evaluation
OMEGA = "omega"  # FedAU's per-client interval estimate (phase "server")

# Privacy rows (phase "privacy"): per round on the server (epsilon: the worst client's
# so far), and each client's final epsilon in the last round.
DP_EPSILON = "epsilon"
DP_CLIP_NORM = "clip_norm"
DP_NOISE_STD = "noise_std"
DP_UNCLIPPED_FRACTION = "unclipped_fraction"
