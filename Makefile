# Two commands do everything on a fresh clone: `make repro` and `make test`.
# Both create .venv from the pinned requirements.txt when it is missing or stale.
VENV   := .venv
PYTHON ?= python3
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: repro test gpu bench preset

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

repro: $(VENV)/.installed  ## run the whole pipeline on params.yaml
	dvc repro

test: $(VENV)/.installed   ## run the test suite
	python -m pytest -q tests

gpu: $(VENV)/.installed    ## on a Linux GPU box: the CUDA build of the same TensorFlow
	$(VENV)/bin/pip install --quiet "tensorflow[and-cuda]==2.21.0"
	python -c "import tensorflow as tf; print('GPUs:', tf.config.list_physical_devices('GPU'))"

bench: $(VENV)/.installed  ## speed and memory figures (several minutes)
	python benchmarks/bench_train.py
	python benchmarks/bench_preprocess.py
	python benchmarks/bench_evaluate.py

preset: ## switch params.yaml to a preset: make preset PRESET=folder-128
	cp presets/$(PRESET).yaml params.yaml
	@echo "params.yaml is now presets/$(PRESET).yaml; run: make repro"
