# Sentinela: every target installs what it needs itself (a fresh machine needs only python3.11).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
AUDIO  ?= ../shared/audio/dev

.DEFAULT_GOAL := help
.PHONY: help install test unit integration lint validate demo model model-gate bench eval train clean scan

help: ## list every target
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[dev,train,tools]'
	@touch $@

install: $(STAMP) ## create .venv and install sentinela with its pinned dependencies

test: $(STAMP) ## lint, type-check, validate template.yaml, run every test
	$(BIN)/ruff check layers tools functions tests models/build
	$(BIN)/mypy
	$(BIN)/python -m sentinela_tools.devtools.validate_template template.yaml
	$(MAKE) --no-print-directory scan
	$(BIN)/python -m pytest -q

unit: $(STAMP) ## run the unit tests only
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP) ## run the integration tests (local stack) only
	$(BIN)/python -m pytest -q tests/integration

lint: $(STAMP) ## ruff + mypy
	$(BIN)/ruff check layers tools functions tests models/build
	$(BIN)/mypy

validate: $(STAMP) ## cfn-lint + SAM transform + cfn-lint on the transformed template
	$(BIN)/python -m sentinela_tools.devtools.validate_template template.yaml

# checkov pins its own dependencies (boto3 among them), so it lives in a venv of its own, kept in .cache.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV    := .cache/tools/checkov
CHECKOV         := $(CHECKOV_VENV)/bin/checkov
CHECKOV_STAMP   := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

$(CHECKOV_STAMP):
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/pip install -q checkov==$(CHECKOV_VERSION)
	@touch $@

scan: $(STAMP) $(CHECKOV_STAMP) ## policy scan: checkov on template.yaml and on the SAM-translated template
	$(BIN)/python -m sentinela_tools.devtools.scan_template --checkov $(CHECKOV) template.yaml

model: ## build and verify the BirdNET V2.4 ONNX model (cached; seconds when present)
	$(PYTHON) models/build/build_model.py

GATE_DIRS ?= ../shared/audio/dev ../shared/audio/train

model-gate: $(STAMP) ## may a model variant replace the fp32 graph? same alerts on every clip of GATE_DIRS; JSON in GATE_JSON
	@$(MAKE) --no-print-directory model
	$(BIN)/sentinela quantgate $(GATE_DIRS) $(if $(GATE_JSON),--json-out $(GATE_JSON))

# Without AUDIO=DIR the demo picks ../shared/audio/dev when present, else the demo pack in demo/audio.
demo: $(STAMP) ## run the whole flow on the local stack with the real model (AUDIO=DIR; default the full set, else demo/audio)
	@$(MAKE) --no-print-directory model
	$(BIN)/sentinela demo $(if $(filter command line environment,$(origin AUDIO)),--audio $(AUDIO))

bench: $(STAMP) ## speed and memory benchmark (prints figures; a JSON file with BENCH_JSON=PATH)
	@$(MAKE) --no-print-directory model
	$(BIN)/sentinela bench $(if $(BENCH_JSON),--json-out $(BENCH_JSON))

clean: ## remove the virtualenv and caches (keeps the built model)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

TRAIN_DIRS ?= ../shared/audio/dev ../shared/audio/train

train: $(STAMP) ## train the threat head on labelled folders (TRAIN_DIRS="DIR ...", default both shared folders)
	@$(MAKE) --no-print-directory model
	SENTINELA_THREADS=2 $(BIN)/sentinela train $(TRAIN_DIRS)

eval: $(STAMP) ## evaluate the configured model on labelled folders (AUDIO=DIR); JSON file in EVAL_JSON=PATH
	@$(MAKE) --no-print-directory model
	$(BIN)/sentinela eval $(AUDIO) $(if $(EVAL_JSON),--json-out $(EVAL_JSON))
