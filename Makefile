# The README's commands. `make setup` once, then `make test`, `make demo`, `make bench`, `make docs`; while working,
# `make test-fast` or `make test-unit` (docs/testing.md).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: setup build test test-fast test-unit lint mypy ruff rust-check rust-test pytest stubtest bench bench-node bench-scale demo \
	docs clean

setup: $(VENV)/.deps build

$(VENV)/.deps: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'maturin>=1.7,<2'
	touch $@

# An old per-version extension (…cpython-311-….so) would shadow the abi3 one; remove every built copy first.
build: $(VENV)/.deps
	rm -f python/gridpilot/_native*.so
	$(VENV)/bin/maturin develop --release --extras test --quiet

rust-check:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --no-default-features -- -D warnings

rust-test:
	cargo test --no-default-features

stubtest: build
	$(PY) -m mypy.stubtest gridpilot._native

# mypy's files and ruff's rules are in pyproject.toml; both tools are pinned in the `test` extra.
mypy: build
	$(PY) -m mypy

ruff: $(VENV)/.deps
	$(VENV)/bin/ruff check

lint: ruff mypy

pytest: build
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything: the Rust checks and tests, the stubs, the linters and every level of tests (docs/testing.md).
test: rust-check rust-test stubtest lint pytest

# tests/unit/ only: pure tests on fixtures, well under 30 s.
test-unit: build
	$(PY) -m pytest -m unit tests/unit $(PYTEST_ARGS)

# Everything but the hostile payload battery (tests/hostile/, the slowest level): the linters, unit and integration.
test-fast: lint build
	$(PY) -m pytest -m "not hostile" $(PYTEST_ARGS)

bench: build
	$(PY) -m pytest benches --benchmark-only --benchmark-columns=min,median,mean,rounds -q
	$(PY) benches/compare.py
	$(PY) benches/bench_storage.py
	$(PY) benches/bench_central.py
	$(PY) benches/bench_hostile.py
	$(PY) benches/bench_cgroup_kill.py
	$(PY) benches/bench_ce.py
	$(PY) benches/bench_runtimes.py
	$(PY) benches/bench_outage.py
	$(PY) benches/bench_kill.py
	$(PY) benches/bench_job_files.py
	$(PY) benches/bench_users.py
	$(PY) benches/bench_history.py
	$(PY) benches/bench_ui.py
	$(PY) benches/bench_node_check.py
	$(PY) benches/bench_arc.py
	$(PY) benches/bench_tower.py

# The full node (W64: 64 jobs x 100 processes) at 1 Hz, every method on the same trees, swept over jobs per node;
# prmon joins when on PATH or PRMON=path (tools/build-prmon.sh). ~20 min; docs/benchmarks.md shows the results.
BENCH_NODE_ARGS ?=
bench-node: build
	$(PY) benches/bench_node.py --json docs/bench_node.json --plot docs/bench_node.svg $(BENCH_NODE_ARGS)
	$(PY) benches/node_table.py docs/bench_node.json

# Central at grid scale (docs/scaling.md), ~25 min: the cost as the queue and the processes grow (match latency and
# CPU with 1k to 1M WAITING jobs, heartbeat updates/s with 1, 2, 4 serve processes), what each pilot call costs,
# then the simulated grid, 10,000 asyncio pilots for 8 min against two serve processes on a private PostgreSQL;
# BENCH_SCALE_ARGS passes the simulator e.g. --pilots 30000.
BENCH_SCALE_ARGS ?=
bench-scale: build
	$(PY) benches/bench_scale_cost.py --json docs/bench_scale_cost.json --plot docs/bench_scale_cost.svg
	$(PY) benches/bench_pilot_calls.py --json docs/bench_pilot_calls.json
	$(PY) benches/simulate_grid.py --json docs/simulate_grid.json --plot docs/simulate_grid.png $(BENCH_SCALE_ARGS)

demo: build
	$(PY) -m gridpilot demo

# The figures of docs/ from their sources: docs/pieces.svg from docs/pieces.dot (Graphviz's dot, Debian `graphviz`),
# the plots of docs/benchmarks.md from its JSON (matplotlib, the `bench` extra). tests/integration/test_docs_pages.py fails when
# a figure is older than its source; docs/configuration.md from the settings declarations (its test fails when stale).
docs: $(VENV)/.deps
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install --quiet 'matplotlib>=3.7'
	$(PY) tools/docs_figures.py
	$(PY) tools/configuration_docs.py

clean:
	rm -rf target $(VENV) python/gridpilot/_native*.so .pytest_cache .benchmarks

# Wheels for x86_64, aarch64 and riscv64 (tools/cross/): Debian's rustc-web with the foreign std of the same
# release, zig as the linker; downloads are kept in .cache/cross/. test-arch runs the core's tests and a smoke test
# of each foreign wheel under qemu-user. They use their own tools, not $(VENV).
.PHONY: wheels test-arch wheels-repro cross-fetch cross-clean

wheels:
	tools/cross/wheels.sh

test-arch: wheels build
	tools/cross/test-arch.sh
	GRIDPILOT_AFTER_WHEELS=1 $(PY) -m pytest -m after_wheels tests $(PYTEST_ARGS)

# Build the last commit again in a fresh clone elsewhere and compare dist/ byte for byte.
wheels-repro: wheels
	tools/cross/repro.sh

# Only the downloads (std and emulated Pythons); wheels and test-arch fetch what they miss. 77: riscv64 skipped.
cross-fetch:
	for arch in aarch64 riscv64; do tools/cross/fetch.sh $$arch std python || [ $$? -eq 77 ]; done

cross-clean:
	rm -rf .cache/cross target/cross

# dist/'s wheels laid out as a CVMFS-style tree of ready-to-run pilot installations, <root>/<version>/<arch>/ and
# <root>/latest (docs/wheels.md). Dependency wheels are downloaded once into .cache/cvmfs/wheelhouse.
CVMFS_ROOT ?= build/cvmfs
CVMFS_PYTHON ?= 3.11
.PHONY: cvmfs-tree
cvmfs-tree: $(VENV)/.deps
	$(PY) tools/cvmfs_tree.py --root $(CVMFS_ROOT) --wheels dist --wheelhouse .cache/cvmfs/wheelhouse --fetch \
		--python $(CVMFS_PYTHON) $(CVMFS_TREE_FLAGS)
