# The README's commands. `make setup` once, then `make test`, `make demo`, `make bench`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: setup build test rust-check rust-test pytest stubtest bench demo clean

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

pytest: build
	$(PY) -m pytest $(PYTEST_ARGS)

test: rust-check rust-test stubtest pytest

bench: build
	$(PY) -m pytest benches --benchmark-only --benchmark-columns=min,median,mean,rounds -q
	$(PY) benches/compare.py
	$(PY) benches/bench_storage.py
	$(PY) benches/bench_central.py

demo: build
	$(PY) -m gridpilot demo

clean:
	rm -rf target $(VENV) python/gridpilot/_native*.so .pytest_cache .benchmarks
