# The two commands of the README: `make demo` and `make test`. Each creates and
# reuses .venv on its own; torch is installed first from the CPU build
# (torch==2.13.0) so that no CUDA packages are pulled in.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedsim-installed
# Test processes (pytest-xdist); each test file runs whole in one of them (--dist loadfile).
# CI has 2 cores; the Ray and subprocess tests wait on I/O enough that 2 workers halve the
# suite's time there.
WORKERS ?= 2

.PHONY: demo test check lint venv

# setuptools warns on every editable install that a folder named like the package may
# shadow it (here it is the package): that one warning of the install is silenced.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedsim run scenarios/quickstart.toml

lint: $(STAMP)
	$(BIN)/ruff check fedsim tests strategies benchmarks scenarios
	$(BIN)/ruff format --check fedsim tests strategies benchmarks scenarios
	$(BIN)/mypy fedsim

test: lint
	$(BIN)/python -m pytest fedsim tests strategies -q -m "not gpu" -n $(WORKERS) --dist loadfile

# The fast inner loop: lint and the tests not marked slow, stopping at the first failure.
check: lint
	$(BIN)/python -m pytest fedsim tests strategies -q -x -m "not gpu and not slow" -n $(WORKERS) --dist loadfile
