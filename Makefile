# nucdet: set-up, demo and tests. `make demo` and `make test` create the environment first.
# DETECTRON2: what pip installs for detectron2. Default: the PyPI wheel. Use
#   make setup DETECTRON2=none                 (keep the detectron2 you already have in the venv)
#   make setup DETECTRON2=/path/to/detectron2  (your own source build / wheel)
VENV        ?= .venv
DETECTRON2  ?= sal-detectron2==0.7.2
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.nucdet-setup
DEMO_OUT    ?= output/demo
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow lint format clean kaggle-bundle

setup: $(STAMP)

$(STAMP): requirements-torch.txt requirements.txt requirements-dev.txt pyproject.toml scripts/setup_env.sh
	@VENV="$(VENV)" DETECTRON2="$(DETECTRON2)" bash scripts/setup_env.sh
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
