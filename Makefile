# et-pipeline: the two commands of the README.
#   make run    set up .venv (Python 3.11, pinned requirements) and run the whole DAG on config.yaml
#   make test   set up .venv the same way and run the test suite (what .ci/run does)
# Variables: PYTHON (interpreter that creates .venv), CORES, SNAKEMAKE_ARGS (e.g. "--config preset=smoke"),
# TORCH_INDEX (an extra pip index for torch, e.g. the CPU wheel index on a machine whose default index
# would resolve torch==2.13.0 to a CUDA build).

PYTHON ?= python3.11
VENV ?= .venv
CORES ?= 4
SNAKEMAKE_ARGS ?=
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements-installed

.PHONY: setup run test dry-run

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -r requirements.txt
	$(BIN)/python -m pip install --no-deps -r requirements-nodeps.txt
	touch $@

run: setup
	$(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/default all $(SNAKEMAKE_ARGS)

test: setup
	$(BIN)/python -m pytest -q tests

dry-run: setup
	$(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/default -n all $(SNAKEMAKE_ARGS)
