# chatgraft: `make run` runs the whole pipeline on the embedded default, `make test` runs the tests.
# Both install first (idempotent): a virtualenv in .venv, torch's CPU wheel with pip, then the project with uv
# (half a minute where pip took two), compiled to bytecode as pip does: PYTHONDONTWRITEBYTECODE=1 is set here, and
# a package without its .pyc files is compiled again by every process that imports it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UV_VERSION := 0.13.9

.PHONY: install browser run test ui screenshots clean bench-overhead bench-merge bench-merge-mergekit bench-eval bench-cp bench-mfu bench-commands bench-flow seeds gpu-check stack-up stack-down

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e '.[test,lm-eval]'
	touch $(STAMP)

run: install
	$(VENV)/bin/chatgraft run

# Debian's Chromium, which the UI test drives through Playwright (no browser download): only the tests need it.
SUDO := $(shell test "$$(id -u)" = 0 || echo sudo)
browser:
	command -v chromium >/dev/null || $(SUDO) apt-get install -y -q chromium >/dev/null \
		|| ($(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null)

# The README's pictures of the MLflow UI, from this project's store (after `make run`).
screenshots: install browser
	$(PY) infra/local/screenshots.py --project-dir . --out docs/images

# One worker a core; a file's tests stay on one worker (module fixtures: a flow run, a server stack on fixed ports).
test: install browser
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder --durations=12 tests

# Benchmarks print figures and ratios against baselines measured in the same run (never timed tests).
bench-merge: install
	$(PY) -m benchmarks.merge

# DVC's commit, the MLflow run, registration, push and loading by alias around a merge of ~1 GB and ~2 GB models,
# with DVC's default links and with this project's (.dvc/config), against the merge command itself.
bench-overhead: install
	$(PY) -m benchmarks.overhead

# The same, with mergekit in a virtualenv of its own (it wants other transformers versions than chatgraft pins).
MERGEKIT_VENV ?= .venv-mergekit
$(MERGEKIT_VENV)/.installed:
	python3 -m venv $(MERGEKIT_VENV)
	$(MERGEKIT_VENV)/bin/pip install -q torch==2.13.0
	$(MERGEKIT_VENV)/bin/pip install -q mergekit==0.1.5
	touch $@

bench-merge-mergekit: install $(MERGEKIT_VENV)/.installed
	MERGEKIT_PYTHON=$(MERGEKIT_VENV)/bin/python $(PY) -m benchmarks.merge

# The in-process engines (padded, continuous, batches of one) on merged-1.0 (built first through DVC when missing), or
# on a random-weight Llama with ARGS="--synthetic 100m" (or 1b).
bench-eval: install
	$(if $(findstring --synthetic,$(ARGS)),,test -d models/merged/alpha-1.0 || $(VENV)/bin/dvc repro merge@1.0)
	$(PY) -m benchmarks.eval $(ARGS)

# Packed against padded training batches of the same documents, same tiny model.
bench-cp: install
	$(PY) -m benchmarks.cp

# Wall time of each person-facing command (promote, rollback, pin, status, history, refused runs) on a finished
# default project: PROJECT=path (default: one built first by `chatgraft run` in a temporary folder).
bench-commands: install
	$(PY) -m benchmarks.commands $(if $(PROJECT),--project-dir $(PROJECT))

# The default flow with one slot and with two (flow.gpu_slots): whole run and evaluation phase; ARGS="--set k=v"
bench-flow: install
	$(PY) -m benchmarks.flow $(ARGS)

# Model FLOPs utilisation of CP training, a ~1B Llama in bf16 with packing and SDPA: needs a CUDA GPU.
# The paper's comparison over seeds, one world at a time: make seeds ARGS="--world language" (about 10 min a seed here)
seeds: install
	$(PY) -m benchmarks.seeds $(ARGS)

bench-mfu: install
	$(PY) -m benchmarks.mfu $(MFU_ARGS)

# On a CUDA machine: the default flow on the GPU (each stage's device and time), the evaluation engines on a ~1B
# model against the bandwidth bound, two evaluations side by side on one GPU, bench-mfu; goal under 10 minutes.
# GPU_CHECK_ARGS="--parts engines,side-by-side" runs some parts only.
gpu-check: install
	$(PY) -m benchmarks.gpu_check --mfu-args "$(MFU_ARGS)" $(GPU_CHECK_ARGS)

ui: install
	$(VENV)/bin/chatgraft ui

# The server stack as plain processes (PostgreSQL on 127.0.0.1:5432, moto S3, mlflow server, prefect server):
# then `source .stack/env && chatgraft run`. STACK_ARGS=--basic-auth for MLflow's basic-auth app.
stack-up: install
	$(PY) infra/local/stack.py up $(STACK_ARGS)

stack-down:
	$(PY) infra/local/stack.py down $(STACK_ARGS)

clean:
	rm -rf data models checkpoints metrics plots reports mlflow/mlflow.db mlflow/artifacts .dvc/cache .dvc-storage dvc.lock
