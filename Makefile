# Two commands do everything on a fresh clone: `make repro` and `make test`.
# Both build .venv from the hash-locked requirements*.txt when it is missing or stale.
# Direct dependencies are edited in requirements*.in; `make lock` regenerates the locks.
VENV      := .venv
PYTHON    ?= python3
SUPPORTED := 3.11 3.12 3.13
comma     := ,
space     := $() $()
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# After `make gpu` the environment holds the CUDA build; a later rebuild keeps it.
ifneq ($(wildcard $(VENV)/.gpu),)
LOCK      := requirements-gpu.txt
OTHER_TF  := tensorflow-cpu
else
LOCK      := requirements.txt
OTHER_TF  := tensorflow
endif
INSTALL   := $(VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes --no-deps
# The Python that builds .venv must be one the pinned TensorFlow and NumPy have wheels for;
# expanded right before a build, so a wrong one stops it with one line.
PY_VERSION = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
CHECK_PY   = $(if $(filter $(SUPPORTED),$(PY_VERSION)),,$(error $(if $(PY_VERSION),Python $(PY_VERSION) ($(PYTHON)) is not supported,$(PYTHON) not found): the pinned TensorFlow 2.21 and NumPy 2.4 install on Python $(subst $(space),$(comma) ,$(SUPPORTED)) only; run e.g. make PYTHON=python3.11))

.PHONY: repro test gpu cpu bench preset lock ruler

$(VENV)/.installed: $(LOCK)
	$(CHECK_PY)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@# Both TensorFlow builds own the same tensorflow/ folder: never leave the other one in.
	$(VENV)/bin/pip uninstall --quiet --quiet --yes $(OTHER_TF)
	$(INSTALL) -r $(LOCK)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(INSTALL) -r requirements-dev.txt
	touch $@

repro: $(VENV)/.installed  ## run the whole pipeline on params.yaml
	dvc repro

test: $(VENV)/.installed-dev   ## run the test suite: on every core, then the two-process multi-worker tests alone
	python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder -m "not multiworker" tests
	python -m pytest -q -m multiworker tests

gpu:  ## on a Linux GPU box: switch .venv (made if missing) to the CUDA build of the same TensorFlow
	$(CHECK_PY)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip uninstall --quiet --quiet --yes tensorflow-cpu
	$(INSTALL) -r requirements-gpu.txt
	touch $(VENV)/.gpu $(VENV)/.installed
	python -c "import src, tensorflow as tf; print('GPUs:', tf.config.list_physical_devices('GPU'))"

cpu:  ## back from `make gpu` to the CPU build
	rm -f $(VENV)/.gpu $(VENV)/.installed
	$(MAKE) $(VENV)/.installed

lock:  ## regenerate the hash-locked requirements*.txt from requirements*.in (needs pip-tools)
	pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.txt requirements.in
	pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-dev.txt requirements-dev.in
	pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-gpu.txt requirements-gpu.in

# The metrics' feature networks ship in data/rulers with their sha256 (SHA256SUMS); `dvc repro`
# only checks and uses them. Retraining makes a new ruler: earlier metrics stop being comparable.
ruler: $(VENV)/.installed  ## retrain the shipped feature networks of the metrics (data/rulers), print the new sha256
	python -m src.metrics.ruler

bench: $(VENV)/.installed  ## speed and memory figures (several minutes)
	python benchmarks/bench_train.py
	python benchmarks/bench_preprocess.py
	python benchmarks/bench_evaluate.py

# A preset holds only the keys it changes: they are written into params.yaml, every other key and
# comment stays (src/presets.py). `make preset PRESET=mnist-default` switches back.
preset:  ## switch params.yaml to a preset: make preset PRESET=folder-fast
	$(if $(PRESET),,$(error name a preset: make preset PRESET=<one of $(basename $(notdir $(wildcard presets/*.yaml)))>))
	@python -c "import numpy, yaml, ruamel.yaml" 2>/dev/null || $(MAKE) --no-print-directory $(VENV)/.installed
	@python -m src.presets $(PRESET)
