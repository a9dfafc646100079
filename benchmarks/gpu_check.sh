#!/usr/bin/env bash
# Issue 14's GPU checks in one go, for a machine with torch and CUDA but neither Ray nor
# Flower's simulation extras (fedsim is not installed there: it runs from the repository
# root through PYTHONPATH). From the repository root:
#
#     bash benchmarks/gpu_check.sh              # with the wheels in .whl/ carried along
#
# 1. installs the wheels of .whl/ (Flower without extras, tomli-w, ...) into /tmp/site;
# 2. prints nvidia-smi, Python, torch, CUDA, and whether Ray and Flower import;
# 3. runs the cohort-vs-sequential tests (tests/test_cohort*.py; those marked gpu if any
#    are) with pytest, if pytest is there;
# 4. python -m benchmarks.run --device cuda --workloads cifar: the plain sequential loop
#    against the inline engine with and without cohorts on pfl-research's CIFAR-10 shape;
# 5. python -m benchmarks.full_cifar --device cuda: 1500 rounds with central evaluation
#    every 10, timed end to end (target <= 60 s).
#
# Every step is bounded (timeout), the whole within BUDGET_S seconds (default 420); a step
# that fails does not stop the next one; the exit status is that of the first failure.
# Logs and CSVs go to $OUT (default ./gpu-check-out): versions.txt, tests.log, bench.log,
# bench/ (results.csv, profile.csv, targets.csv, runs.jsonl), full.log, full/ (full.csv).
#
# Settings (environment): OUT, PYTHON (python3), DEVICE (cuda), REPS (3), BUDGET_S (420),
# DATA (/tmp/fedsim-bench-data: the generated data set, reused), WHEELS (.whl; empty: none),
# SITE (/tmp/site: where they go), QUICK=1 (tiny sizes), HIDE_RAY=1 (make `import ray`
# fail, as on the GPU machine). A dry run on a CPU machine (the wheels are for Python 3.12):
#
#     DEVICE=cpu QUICK=1 HIDE_RAY=1 WHEELS= PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh

set -u
set -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-check-out}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
REPS=${REPS:-3}
BUDGET_S=${BUDGET_S:-420}
DATA=${DATA:-/tmp/fedsim-bench-data}
QUICK=${QUICK:-0}
HIDE_RAY=${HIDE_RAY:-0}
WHEELS=${WHEELS-.whl}
SITE=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
SECONDS=0
STATUS=0
declare -a REPORT=()

note() { echo "[gpu_check $(printf '%3d' "$SECONDS") s] $*" | tee -a "$OUT/steps.txt"; }
# A step's time limit: at most $1 s, and what the budget leaves after $2 s kept for later.
limit() {
    local want=$1 keep=$2 have
    have=$((BUDGET_S - SECONDS - keep))
    if ((have < want)); then want=$have; fi
    echo "$want"
}
record() {  # record NAME STATUS
    REPORT+=("$1: $(if (($2 == 0)); then echo ok; elif (($2 == 124)); then echo 'timed out'; else echo "exit $2"; fi)")
    if (($2 != 0 && STATUS == 0)); then STATUS=$2; fi
}

# 1. Wheels (fedsim's dependencies that the image lacks), into a folder of their own.
if [[ -n $WHEELS ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    note "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
    if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl >"$OUT/pip.log" 2>&1; then
        record wheels 0
    else
        record wheels $?
        tail -20 "$OUT/pip.log"
    fi
    export PYTHONPATH=$SITE:$ROOT
else
    note "no wheels to install (WHEELS=$WHEELS): using what $PYTHON has"
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
if [[ $HIDE_RAY == 1 ]]; then
    export PYTHONPATH=$ROOT/benchmarks/hide_ray:$PYTHONPATH
    note "HIDE_RAY=1: import ray fails in every process"
fi

# 2. The machine.
{
    date -u
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    "$PYTHON" - <<'EOF'
import importlib.util, platform, sys
import torch
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory // 2**20, "MiB")
def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
print("ray installed:", found("ray"))
import flwr, fedsim.cli, fedsim.simulation, fedsim.engine.inline_grid
print("flwr", flwr.__version__ if hasattr(flwr, "__version__") else "?", "and fedsim import")
print("ray imported by fedsim's import:", "ray" in sys.modules)
EOF
} 2>&1 | tee "$OUT/versions.txt"
record versions $?
if [[ $DEVICE == cuda ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    note "DEVICE=cuda but torch sees no GPU: stopping"
    exit 1
fi

# 3. The cohort tests, on the GPU where they have CUDA variants.
if ! "$PYTHON" -c "import pytest" 2>/dev/null; then
    note "pytest is not installed: cohort tests skipped"
    REPORT+=("tests: skipped (no pytest)")
elif ! compgen -G "tests/test_cohort*.py" >/dev/null; then
    note "no tests/test_cohort*.py: cohort tests skipped"
    REPORT+=("tests: skipped (no test files)")
else
    selection=()
    if grep -qs "mark.gpu" tests/test_cohort*.py; then selection=(-m gpu); fi
    t=$(limit 90 270)
    note "pytest tests/test_cohort*.py ${selection[*]} (at most $t s)"
    timeout -k 5 "$t" "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
        tests/test_cohort*.py "${selection[@]}" 2>&1 | tee "$OUT/tests.log"
    record tests $?
fi

# 4. Per-round ratios: plain sequential loop, inline, inline+cohort on the CIFAR shape.
quick=()
if [[ $QUICK == 1 ]]; then quick=(--quick); fi
t=$(limit 180 130)
note "benchmarks.run --device $DEVICE --workloads cifar --reps $REPS (at most $t s)"
timeout -k 5 "$t" "$PYTHON" -m benchmarks.run --device "$DEVICE" --workloads cifar --actors 1 \
    --reps "$REPS" --data "$DATA" --out "$OUT/bench" "${quick[@]}" 2>&1 | tee "$OUT/bench.log"
record bench $?

# 5. The full run: 1500 rounds, central evaluation every 10 (rounds stop at --max-seconds).
t=$(limit 240 5)
rounds_s=$((t - 40))
if ((rounds_s < 20)); then rounds_s=20; fi
note "benchmarks.full_cifar --device $DEVICE (at most $t s, rounds stop after $rounds_s s)"
timeout -k 5 "$t" "$PYTHON" -m benchmarks.full_cifar --device "$DEVICE" --data "$DATA" \
    --out "$OUT/full" --max-seconds "$rounds_s" "${quick[@]}" 2>&1 | tee "$OUT/full.log"
record full $?

{
    echo
    echo "== gpu_check: $SECONDS s of $BUDGET_S =="
    printf '%s\n' "${REPORT[@]}"
    for f in "$OUT/bench/targets.csv" "$OUT/bench/results.csv" "$OUT/full/full.csv"; do
        if [[ -f $f ]]; then
            echo "-- $f"
            cat "$f"
        fi
    done
} 2>&1 | tee "$OUT/summary.txt"
exit "$STATUS"
