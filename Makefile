# nucdet: set-up, demo and tests. `make demo` and `make test` create the environment first.
# DETECTRON2: where detectron2 comes from. Default `source`: the official source at the commit
# pinned in nucdet/__about__.py, compiled once per machine (cached wheel, see
# scripts/build_detectron2.sh). Or:
#   make setup DETECTRON2=none                 (keep the detectron2 you already have in the venv)
#   make setup DETECTRON2=/path/to/detectron2  (your own source build / wheel / git URL)
#   make setup NUCDET_PYTHON=3.12              (Python 3.12 instead of the default 3.11)
VENV        ?= .venv
DETECTRON2  ?= source
NUCDET_PYTHON ?= 3.11
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.nucdet-setup
DEMO_OUT    ?= output/demo
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow lint format clean kaggle-bundle

setup: $(STAMP)

$(STAMP): requirements-torch.txt requirements.txt requirements-dev.txt requirements-lock.txt \
		pyproject.toml scripts/setup_env.sh scripts/build_detectron2.sh nucdet/__about__.py
	@VENV="$(VENV)" DETECTRON2="$(DETECTRON2)" NUCDET_PYTHON="$(NUCDET_PYTHON)" bash scripts/setup_env.sh
	@touch $(STAMP)

demo: $(STAMP)
	@$(PY) -m nucdet.tools.demo --output $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# Slow tests (multi-process training, notebook bundle, real-data checks): not in `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

kaggle-bundle: $(STAMP)
	$(PY) -m nucdet.tools.kaggle_bundle $(BUNDLE_ARGS)

clean:
	rm -rf output .pytest_cache
