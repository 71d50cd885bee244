# Every target does its own set-up: the virtual environment, the Python packages,
# the Debian packages the tests need and the Apache Kafka jars from Maven.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py | cksum | cut -d' ' -f1)
KAFKA_VERSION := 4.1.1
KAFKA_HOME ?= $(HOME)/.cache/processor/kafka-$(KAFKA_VERSION)

.PHONY: container-test demo test lint typecheck unit conformance integration faults bench soak kafka-jars registry-app system-deps broker clean

# The install compiles the codec's hot module with mypyc (setup.py): a C compiler and the
# Python headers are installed when missing. setuptools warns on every editable install of
# a top-level package that a folder of the same name in the working directory could shadow
# it: that folder is this package, so the warning is filtered out.
$(STAMP): pyproject.toml setup.py processor/serde/artifact_avro.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
	  { apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	@missing=""; command -v cc >/dev/null || missing="gcc libc6-dev"; \
	$(BIN)/python -c "import sysconfig, os, sys; \
	  sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(BIN)/python -m pip install -q --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(BIN)/processor demo

# Java, Maven and Prometheus are Debian packages; installed only when missing.
system-deps:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v prometheus >/dev/null || test -x /usr/bin/prometheus || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

kafka-jars: system-deps $(STAMP)
	PROCESSOR_KAFKA_HOME=$(KAFKA_HOME) $(BIN)/python -c \
	  "from processor.devtools.local_kafka import ensure_jars; print('Apache Kafka jars in', ensure_jars())"

# The schema registry of the tests (Apicurio, from Maven; runs on Java 21 or later, which
# processor.devtools.registry.find_java looks for and names when missing).
registry-app: system-deps $(STAMP)
	$(BIN)/python -c "from processor.devtools.registry import ensure_registry, find_java; \
	  print('schema registry in', ensure_registry(), 'with', find_java())"

# Style, and the import contracts of pyproject.toml (layers: see docs/architecture.md).
lint: $(STAMP)
	$(BIN)/ruff check processor tests benchmarks
	$(BIN)/lint-imports --no-logo

typecheck: $(STAMP)
	$(BIN)/mypy --strict processor tests

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test: $(STAMP) kafka-jars registry-app
	$(BIN)/ruff check processor tests benchmarks
	$(BIN)/lint-imports --no-logo
	$(BIN)/mypy --strict processor tests
	# The unit tier is CPU-bound and needs no broker: two workers. The tiers on real
	# brokers run one test at a time (their timing bounds assume a machine not shared
	# with another test).
	$(BIN)/pytest -q -ra --durations=10 -n 2 tests/unit
	PROCESSOR_KAFKA_HOME=$(KAFKA_HOME) $(BIN)/pytest -q -ra --durations=15 tests \
	  --ignore=tests/containers --ignore=tests/unit
	$(MAKE) container-test

# The container tier (tests/containers): a Docker engine (the one DOCKER_HOST or the default
# socket points at, else a private loopback-only engine from deploy/docker/engine.sh), the images
# (pulled, or built locally where they cannot be), Docker Compose v2 (built from source when
# missing). Figures in build/container-test-report.txt.
container-test: system-deps $(STAMP)
	$(BIN)/pytest -q -ra --durations=10 tests/containers

# The side-by-side benchmark (benchmarks/README.md); options through BENCH_ARGS, e.g.
# make bench BENCH_ARGS="--count 50000 --only ceiling,project-alo"
BENCH_ARGS ?=
bench: $(STAMP) kafka-jars
	PROCESSOR_KAFKA_HOME=$(KAFKA_HOME) $(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# The soak (docs/reliability.md): three stages on Kafka for SOAK_MINUTES, with kills;
# not part of `make test`. E.g. make soak SOAK_MINUTES=5 SOAK_ARGS="--rate 300"
SOAK_MINUTES ?= 30
SOAK_ARGS ?=
soak: $(STAMP) kafka-jars
	PROCESSOR_KAFKA_HOME=$(KAFKA_HOME) $(BIN)/python benchmarks/soak.py --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

broker: $(STAMP) kafka-jars
	PROCESSOR_KAFKA_HOME=$(KAFKA_HOME) $(BIN)/processor broker

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache
