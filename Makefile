# The platform's commands. `make demo` runs everything with demo traffic; `make test` runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PYTHON    ?= python3
CRM_HOME  ?= $(CURDIR)/.crm
export CRM_HOME
export CRM_PYTHON := $(CURDIR)/$(VENV)/bin/python

STAMP := $(VENV)/.installed

.PHONY: help install base-deps system-deps infra-up infra-down demo up stop status test test-unit chaos bench bench-quick bench-deps schemas clean logs mutate

help:
	@echo "make demo    - install what is missing, start Kafka, PostgreSQL, every service and demo traffic"
	@echo "make test    - install what the tests need and run the whole test suite"
	@echo "make chaos   - the long chaos run: 50,000 events through every fault (own Kafka and PostgreSQL)"
	@echo "make bench   - every benchmark of the README's Benchmarks (~40 min): bench/results.json, docs/benchmarks.md"
	@echo "make bench-quick - the same, small (a few minutes)"
	@echo "make stop    - stop everything started by make demo"
	@echo "make status  - what runs"
	@echo "make schemas - regenerate docs/schemas and docs/asyncapi.yaml from the declarations"

$(STAMP): pyproject.toml | base-deps
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# What a fresh Debian 12 machine lacks to run the platform at all: Java 17 and Maven (the Kafka broker's
# jars are fetched from Maven Central and run with the machine's Java), openssl (certificates of the
# transport tests and demo secrets) and the venv module. PostgreSQL is installed by deploy/postgres.sh.
base-deps:
	@missing=""; \
	java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])' || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi

# Debian packages the tests need beyond PostgreSQL (installed by deploy/postgres.sh itself):
# docker-compose (to check docker-compose.yml parses), chromium and its chromedriver (the
# dashboard's browser test; Selenium drives the system browser, nothing is downloaded at run time)
# and a Chinese font for its screenshots.
system-deps: base-deps
	@missing=""; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	[ -n "$$(fc-list :lang=zh 2>/dev/null)" ] || missing="$$missing fonts-wqy-zenhei"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi

infra-up: install
	deploy/postgres.sh start
	deploy/kafka.sh start

infra-down:
	-deploy/kafka.sh stop
	-deploy/postgres.sh stop

up: infra-up
	deploy/services.sh start ingest processor api webhooks mail

demo: up
	deploy/services.sh start shop simulator
	@echo
	@echo "  CRM platform is running with demo traffic:"
	@echo "    collector      http://127.0.0.1:$${CRM_INGEST_PORT:-8080}/v1/events   (docs: /docs)"
	@echo "    query API      http://127.0.0.1:$${CRM_API_PORT:-8000}/v1/customers   (docs: /docs)"
	@echo "    dashboard      http://127.0.0.1:$${CRM_API_PORT:-8000}/dashboard      (中文/English; sign in as demo, password in $(CRM_HOME)/keys/dashboard.password)"
	@echo "    processor      http://127.0.0.1:$${CRM_PROCESSOR_WEB_PORT:-6066}/metrics"
	@echo "    webhooks       http://127.0.0.1:$${CRM_API_PORT:-8000}/v1/webhooks    (dispatcher: :$${CRM_WEBHOOKS_PORT:-8090}/metrics)"
	@echo "    mail (SMTP)    127.0.0.1:$${CRM_MAIL_PORT:-2525}  for @shop.example.com   (crm-mail: :$${CRM_MAIL_WEB_PORT:-8025}/metrics)"
	@echo "    demo shop      http://127.0.0.1:$${CRM_SHOP_PORT:-8081}/index.html?collector=http://127.0.0.1:$${CRM_INGEST_PORT:-8080}&key=$$(cat $(CRM_HOME)/keys/shop.key)"
	@echo "                   (the web tracker: browse, sign in, add to cart; README: Channel adapters)"
	@echo "    Kafka          127.0.0.1:$${CRM_KAFKA_PORT:-9092}    PostgreSQL 127.0.0.1:$${CRM_PG_PORT:-5432}/crm"
	@echo "    logs           $(CRM_HOME)/logs/"
	@echo "    API keys       $(CRM_HOME)/keys/operator.key (admin), simulator.key (events:write); send them as"
	@echo "                   Authorization: Bearer <key> (README: Security and privacy)"
	@echo "  make stop   stops everything"

stop:
	-deploy/services.sh stop
	$(MAKE) --no-print-directory infra-down

status:
	-deploy/services.sh status
	-deploy/kafka.sh status
	-deploy/postgres.sh status

# The tests start (and stop) their own broker and database on separate ports under .crm/test,
# so they never disturb a running demo. The order is shuffled (pytest-randomly prints its seed);
# the 25 slowest tests are listed and a JUnit report is written to .crm/test/junit.xml.
test: system-deps install
	$(VENV)/bin/python -m pytest -p no:cacheprovider --durations=25 --junitxml=$(CRM_HOME)/test/junit.xml

test-unit: install
	$(VENV)/bin/python -m pytest -p no:cacheprovider tests/unit

# The chaos test alone with 50,000 events (CRM_CHAOS_EVENTS; two rounds of every fault) on a test
# stack of its own (CRM_TEST_HOME and the CRM_TEST_*_PORT variables choose another); figures in
# .crm/test/chaos-<events>.json. `make test` runs a short version of it (6,000 events).
chaos: install
	CRM_CHAOS_EVENTS=$${CRM_CHAOS_EVENTS:-50000} $(VENV)/bin/python -m pytest -p no:cacheprovider -s -q \
	  tests/integration/test_faults.py -m chaos

# The benchmarks start (and stop) their own broker, database and services on separate ports under
# .crm/bench; they write bench/results.json and docs/benchmarks.md. See bench/README.md.
PEER_VENV := .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed

# the Python peer (quixstreams pins an older pydantic than the platform's: a virtualenv of its own)
$(PEER_STAMP): pyproject.toml
	@test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet --upgrade pip
	$(PEER_VENV)/bin/pip install --quiet -e . 'quixstreams>=3.20,<4' 'psutil>=6'
	@touch $(PEER_STAMP)

bench-deps: install $(PEER_STAMP)
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'

bench: bench-deps
	$(VENV)/bin/python -m bench.run

bench-quick: bench-deps
	$(VENV)/bin/python -m bench.run --quick

schemas: install
	$(VENV)/bin/crm schemas export --out docs/schemas
	$(VENV)/bin/crm asyncapi export --out docs/asyncapi.yaml

logs:
	tail -n 50 -f $(CRM_HOME)/logs/*.log

clean: stop
	rm -rf $(CRM_HOME)

# Mutation testing of the pure folds: each hand-made fault in projections/ must fail tests/unit
# (run on a temporary copy; the tree here is never modified).
mutate: install
	$(VENV)/bin/python -m tests.mutation.run
