# The one task runner: people and CI call the same targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PROTO_FILES := $(shell find protos -name '*.proto' | sort)
export DVC_NO_ANALYTICS := 1
export PYTHONDONTWRITEBYTECODE := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install protos protos-check lint format test test-long bench bench-quick bench-gpu demo docs clean

# Idempotent: re-runs pip only when pyproject.toml changed since the last install.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" "setuptools>=69" wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Stubs are committed; `make protos-check` (part of `make test`) regenerates and fails on any diff.
protos: install
	rm -rf gen/arc
	mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos \
		--python_out=gen --grpc_python_out=gen \
		--mypy_out=gen --mypy_grpc_out=only_async:gen \
		$(PROTO_FILES)
	find gen/arc -type d -exec touch {}/__init__.py \;
	touch gen/arc/py.typed

protos-check: protos
	@git diff --exit-code --stat -- gen/ || { echo "generated stubs are stale: run 'make protos' and commit gen/"; exit 1; }
	@test -z "$$(git ls-files --others --exclude-standard gen/)" || { echo "new generated files not committed:"; git ls-files --others --exclude-standard gen/; exit 1; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy arc_common services clients tests bench
	cd protos && ../$(BIN)/buf lint
	@if git rev-parse --verify -q main >/dev/null && git cat-file -e main:protos/buf.yaml 2>/dev/null; then \
		cd protos && ../$(BIN)/buf breaking --against '../.git#branch=main,subdir=protos'; \
	else echo "buf breaking: no protos on main yet, nothing to compare"; fi

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install protos-check lint
	$(BIN)/pytest -q -m "not slow" --durations=20

test-long: install
	ARC_TEST_LONG=1 $(BIN)/pytest -q

# Ratios against baselines measured in the same run; results in bench/results/latest.json.
bench: install
	$(PY) -m bench.run

bench-quick: install
	$(PY) -m bench.run --quick

# On a GPU machine: NVML, CUDA training, the gap between jobs on a real GPU (a few minutes).
bench-gpu: install
	$(PY) -m bench.gpu

# The whole engine on this machine in a few minutes: suite up, sweep, leaderboard, Grad-CAM,
# audit check, suite down. ARC_DEMO_HOME and ARC_DEMO_PORT_BASE move it elsewhere.
ARC_DEMO_HOME ?= .arc-demo
ARC_DEMO_PORT_BASE ?= 50051
demo: install
	$(BIN)/arc --home $(ARC_DEMO_HOME) --port-base $(ARC_DEMO_PORT_BASE) demo

# docs/configuration.md's table, generated from the settings models (a test checks it).
docs: install
	$(PY) -m arc_common.settings_table --write docs/configuration.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
