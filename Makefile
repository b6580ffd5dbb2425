# SnapGen-Repro: set-up, tests, ablations and reports. Every target uses the project venv ($(VENV)).
#   make install              create $(VENV), install torch ($(TORCH)), then this package with its test extras
#   make install TORCH="torch==2.11.0"   same, with another torch (the constraint follows what is installed)
#   make test                 the test suite (CPU, minutes)
#   make ablation-unet        the UNet architecture ablation (Fig. 3 / Table 1) at SCALE=smoke|small|paper [SEEDS=N]
#   make mlflow-server        a tracking server many trials share (README "On a cluster"); MLFLOW_BACKEND_STORE_URI=...

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON_BOOT ?= python3
TORCH ?= torch==2.13.0
SCALE ?= smoke
EXECUTOR ?= local
SEEDS ?=
LATENT ?= 128
# make mlflow-server: loopback only unless MLFLOW_HOST says otherwise; SQLite unless the environment names PostgreSQL
# (MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://user@db-host/mlflow); artifacts are proxied by the server into here.
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_BACKEND_STORE_URI ?= sqlite:///mlruns.db
MLFLOW_ARTIFACTS_DESTINATION ?= mlartifacts
MLFLOW_WORKERS ?= 4

PY := $(VENV)/bin/python
CONSTRAINTS := $(VENV)/constraints.txt
# One stamp per torch spec, so `make install TORCH=...` reinstalls while a plain rerun is a no-op.
TORCH_SPEC_ID := $(shell printf '%s' '$(TORCH)' | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.snapgen-installed-$(TORCH_SPEC_ID)

# The shared assets (TAESD weights, CIFAR-10, prompt lists) sit beside the checkout in ../shared/assets.
ifneq ($(wildcard ../shared/assets),)
SNAPGEN_ASSETS ?= $(abspath ../shared/assets)
endif
ifdef SNAPGEN_ASSETS
export SNAPGEN_ASSETS
endif

.PHONY: help install test ablation-unet ablation-kd table1 table2 table3 efficiency mlflow-ui mlflow-server weights clean \
	distclean

help:
	@sed -n '2,6p' Makefile | sed 's/^# \{0,1\}//'
	@echo "other targets: ablation-kd table1 table2 table3 efficiency mlflow-ui mlflow-server weights clean distclean"
	@echo "variables: VENV=$(VENV) TORCH=$(TORCH) SCALE=$(SCALE) EXECUTOR=$(EXECUTOR) SNAPGEN_ASSETS=$(SNAPGEN_ASSETS)"

install: $(STAMP)

# torch goes in first and is then pinned: without the pin, pip would resolve `torch>=2.4` (or torchvision's own
# torch pin) to the newest CUDA build from the registry and pull several GB of CUDA packages.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' > $(CONSTRAINTS)
	@echo "constraints: $$(cat $(CONSTRAINTS))"
	PIP_CONSTRAINT="$(abspath $(CONSTRAINTS))" $(PY) -m pip install --quiet -e ".[test]"
	@# Writes a start-up .pth only where `import torchvision` is broken (see snapgen/_torchvision_compat.py).
	$(PY) -m snapgen._torchvision_compat --install-if-broken
	@rm -f $(VENV)/.snapgen-installed-*
	@touch $@

test: install
	$(PY) -m pytest -q

# The sweep runs, trains, evaluates, profiles and logs each Fig. 3 step; reports then read MLflow (the Fig. 3 table
# and figure even when a trial failed). Until ablations/sweep.py exists the target runs the efficiency walk instead.
ablation-unet: install
	@if [ -f ablations/sweep.py ]; then \
	  rc=0; $(PY) -m ablations.sweep unet --scale $(SCALE) --executor $(EXECUTOR) $(if $(SEEDS),--seeds $(SEEDS)) \
	    || rc=$$?; \
	  $(PY) -m reports.tables fig3 --scale $(SCALE) --details reports/figures/fig3_sweep_details.csv --log-to-sweep; \
	  $(PY) -m reports.figures fig3 --from-mlflow --scale $(SCALE) --out reports/figures/fig3_sweep.png --log-to-sweep \
	    || echo "figure not written (the table above is the record)"; \
	  $(PY) -m reports.figures pareto --scale $(SCALE) --out reports/figures/fig3_sweep_pareto.png \
	    || echo "Pareto plot not written"; \
	  if [ $$rc -ne 0 ]; then exit $$rc; fi; \
	  $(PY) -m reports.tables table1 --efficiency-only; \
	else \
	  echo "ablations/sweep.py not present yet: running the efficiency walk"; \
	  $(PY) -m snapgen.profile walk fig3 --latent $(LATENT); \
	fi

ablation-kd: install
	@if [ -f ablations/sweep.py ]; then \
	  $(PY) -m ablations.sweep kd --scale $(SCALE) --executor $(EXECUTOR); \
	else \
	  echo "ablations/sweep.py not present yet: only the KD table from what MLflow holds"; \
	fi
	$(PY) -m reports.tables kd

# Supplement H's ImageNet protocol (ablations/specs/imagenet.yaml; CIFAR-10 at SCALE=smoke), then Table 1 from MLflow.
# A rerun skips the finished trial and only prints the table.
table1: install
	rc=0; $(PY) -m ablations.sweep imagenet --scale $(SCALE) --executor $(EXECUTOR) || rc=$$?; \
	$(PY) -m reports.tables table1; exit $$rc

# Our decoder rows: the committed GPU results (reports/results/decoder_small, decoder_latency) logged to MLflow once.
table2: install
	$(PY) -m reports.ingest decoder
	$(PY) -m reports.tables table2

# The committed throughput results (reports/results/throughput*/) logged to MLflow once; `make table3 CKPTS="runs/a
# runs/b"` runs the four T2I benchmarks on each checkpoint first.
table3: install
	$(PY) -m reports.ingest throughput
	@if [ -n "$(CKPTS)" ]; then $(PY) -m evals.table3 $(CKPTS); fi
	$(PY) -m reports.tables table3

efficiency: install
	$(PY) -m snapgen.profile walk fig3 --latent $(LATENT)
	$(PY) -m reports.tables table1 --efficiency-only
	$(PY) -m reports.tables table2 --efficiency-only
	$(PY) -m reports.figures fig3 --efficiency-only

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns.db --host 127.0.0.1 --port 5000

# Trials, sweeps and evals log here when MLFLOW_TRACKING_URI=http://<this host>:$(MLFLOW_PORT) is set where they run.
mlflow-server: install
	$(VENV)/bin/mlflow server --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers $(MLFLOW_WORKERS) \
	  --backend-store-uri "$(MLFLOW_BACKEND_STORE_URI)" --serve-artifacts \
	  --artifacts-destination "$(MLFLOW_ARTIFACTS_DESTINATION)"

weights: install
	$(PY) -m snapgen.weights

# Removes build and test caches; keeps the venv, mlruns.db and reports/results/ (`make distclean` drops the venv).
clean:
	rm -rf build *.egg-info .pytest_cache
	find . \( -path ./.git -o -path ./$(VENV) \) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
