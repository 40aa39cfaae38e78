# chatgraft: `make run` runs the whole pipeline on the embedded default, `make test` runs the tests.
# Both install first (idempotent): a virtualenv in .venv, torch's CPU wheel, then the project.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: install
	$(VENV)/bin/chatgraft run

test: install
	$(PY) -m pytest -q tests

ui: install
	$(VENV)/bin/chatgraft ui

clean:
	rm -rf data models metrics plots reports mlflow/mlflow.db mlflow/artifacts .dvc/cache .dvc-storage dvc.lock
