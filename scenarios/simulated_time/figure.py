"""The figure of docs/simulated-time.md: test accuracy against simulated hours, one line
per run of RUNS (default runs/simtime), labelled by scenario name.

    python scenarios/simulated_time/figure.py runs/simtime docs/figures/simtime-accuracy.png
"""

from __future__ import annotations

import sys

from fedsim.analysis import find_runs, load_runs
from fedsim.analysis.report import curves_figure

runs = sys.argv[1] if len(sys.argv) > 1 else "runs/simtime"
out = sys.argv[2] if len(sys.argv) > 2 else "simtime-accuracy.png"
frame = load_runs(find_runs(runs))
figure = curves_figure(frame, "accuracy", by=["name"], hours=True, ylabel="test accuracy")
figure.savefig(out, dpi=120)
print(f"wrote {out}")
