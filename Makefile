# The README's two commands: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup test test-unit test-integration lint fmt typecheck bench demo clean protos

setup:
	@bash scripts/setup.sh

# Test workers: most of a test's time is spent waiting on the engine, a container or a server.
TEST_JOBS ?= 3
PYTEST_PARALLEL := -n $(TEST_JOBS) --dist loadgroup

test: setup lint typecheck
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

test-unit:
	$(PY) -m pytest -q -m "not integration" $(PYTEST_PARALLEL)

test-integration: setup
	$(PY) -m pytest -q -m integration $(PYTEST_PARALLEL)

lint:
	$(VENV)/bin/ruff check omibuild tests bench
	$(VENV)/bin/ruff format --check omibuild tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/vulture omibuild tests/vulture_whitelist.py --min-confidence 60
	bash scripts/max-lines.sh

fmt:
	$(VENV)/bin/ruff format omibuild tests bench
	$(VENV)/bin/ruff check --fix omibuild tests bench

typecheck:
	$(VENV)/bin/mypy

bench: setup
	@bash bench/setup.sh
	$(PY) bench/run.py

demo: setup
	@bash scripts/demo.sh

# The gRPC interfaces' descriptor set, compiled from the .proto files (grpcio-tools is a
# development dependency only; omi.desc is committed and loaded by omibuild/runtime/protos.py),
# and the engine's: containerd's content and lease messages (omibuild/engine/containerd.py).
PROTO_DIR := omibuild/runtime/proto
protos:
	$(PY) -m grpc_tools.protoc -I $(PROTO_DIR) --descriptor_set_out=$(PROTO_DIR)/omi.desc \
	  $(PROTO_DIR)/grpc_predict_v2.proto $(PROTO_DIR)/modzy_model.proto
	$(PY) -m grpc_tools.protoc -I omibuild/engine/proto \
	  --descriptor_set_out=omibuild/engine/proto/containerd.desc \
	  omibuild/engine/proto/containerd.proto omibuild/engine/proto/leases.proto

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
