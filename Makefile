# Two set-up commands (README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= local_outputs
PREPARE_LOG ?= /var/tmp/sidreasoner-image-prepare.log

.PHONY: demo test lint image-test image-prepare golden test-fast install install-dev compile images push-images clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version'
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: a looser requirement pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,rl]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/sidreasoner run --preset demo --pipeline-root $(OUT) --summary $(OUT)/summary.json

# Under CI (CI set), also the image test below, whose set-up (podman, the CPU image build: minutes on a fresh
# machine, mostly waiting on downloads) runs in the background while pytest runs.
test: install-dev
	if [ -n "$$CI" ]; then \
	    echo "image test set-up in the background, log: $(PREPARE_LOG)"; \
	    $(MAKE) --no-print-directory image-prepare >$(PREPARE_LOG) 2>&1 & \
	fi; \
	$(BIN)/python -m pytest; status=$$?; wait; exit $$status
	if [ -n "$$CI" ]; then $(MAKE) image-test; fi

# The demo DAG with every step in the CPU image, through kfp's DockerRunner on podman, compared with the
# venv run `make test` just made of the same tree, else with tests/golden/ (tests/test_image_dag.py). As
# root on Debian it installs and sets up podman, then builds a local base image and the CPU image, reused
# while their inputs are unchanged; elsewhere the test is skipped with the reason.
# SIDREASONER_TEST_TRAIN_IMAGE=1 also builds the training image (GBs).
image-test: install-dev
	SIDREASONER_IMAGE_TEST=1 $(BIN)/python -m pytest tests/test_image_dag.py -rs -s

# podman set up and the CPU image built for the image test (which reuses it, or waits for a set-up under way).
image-prepare: install-dev
	$(BIN)/python -m tests.helpers.image_build --prepare images/cpu/Dockerfile localhost/sidreasoner-cpu

# Records tests/golden/small_dag_metrics.json again: the small demo DAG's seeded metrics on this machine,
# which tests/test_pipeline_local.py checks and the image test falls back on. Run it when a change is meant
# to move them, and commit the file with the change.
golden: install-dev
	$(BIN)/python -m tests.helpers.small_dag

# ruff's lint rules and formatter (pyproject.toml); tests/test_lint.py checks the same under make test.
lint: install-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Everything but the tests marked slow (training, kfp.local pipeline runs, image installs).
test-fast: install-dev
	$(BIN)/python -m pytest -m "not slow"

compile: install
	$(BIN)/sidreasoner compile --preset demo -o sidreasoner-pipeline.yaml

# Needs a Docker engine (none on the development VMs). Names and tags come from
# components/images.py, the same place the compiled pipeline takes them from.
images: install
	$(BIN)/python -m sidreasoner.components.images | sh -ex

push-images: install
	$(BIN)/python -m sidreasoner.components.images --push | sh -ex

clean:
	rm -rf $(OUT) sidreasoner-pipeline.yaml
