# make install | demo | test | lint | report | suite1 | suite2 | gpu-campaign | maxfit | maxfit-gpu | composability |
# robustness
# Extra Hydra overrides go in ARGS, e.g. `make suite1 ARGS="trainer.device=cuda"`; the campaign's size in SCALE.
PYTHON3 ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNS ?= runs
RESULTS ?= results
SCALE ?= full
ARGS ?=
# After a sweep: the report of every run under RUNS goes to RESULTS, also when a run failed (it counts failed runs);
# make still fails then, with the sweep's exit status.
REPORT_AFTER = status=$$?; $(PYTHON) -m scripts.report $(RUNS) --out $(RESULTS) && exit $$status

.PHONY: install demo test lint report suite1 suite2 gpu-campaign maxfit maxfit-gpu composability robustness

install: $(STAMP)

# Torch's pinned build first, so the project's `torch>=2.4` is already met; redone when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PYTHON3) -m venv $(VENV)
	$(PYTHON) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install -e '.[harness,dev]'
	touch $@

test: install
	$(PYTHON) -m pytest -n 2

lint: install
	$(PYTHON) -m ruff check .

# TinyBERT x synthetic pairs x 5 exact variants x seeds 0-4 on the CPU, then the report.
demo: install
	$(PYTHON) run.py -m experiment=demo runs_root=$(RUNS) $(ARGS); $(REPORT_AFTER)

report: install
	$(PYTHON) -m scripts.report $(RUNS)/ --out $(RESULTS)/

# The paper's suites, on real data (see conf/workload/ for the data paths each needs) and a GPU.
suite1: install
	$(PYTHON) run.py -m experiment=suite1 runs_root=$(RUNS) $(ARGS)

suite2: install
	$(PYTHON) run.py -m experiment=suite2 runs_root=$(RUNS) $(ARGS)

# Memory and step time at the paper's shapes on synthetic data. SCALE=full: for a GPU; SCALE=smoke: minutes on a CPU.
gpu-campaign: install
	$(PYTHON) run.py -m experiment=gpu_campaign campaign/scale=$(SCALE) runs_root=$(RUNS) $(ARGS)

# Issue 6's experiments, each followed by the report: largest batch/context per variant (CPU: saved-bytes budget;
# maxfit-gpu: CUDA memory), exactness and saved bytes under checkpointing/bf16/compile/sdpa, and the bit-flip and
# FGSM robustness checks.
maxfit: install
	$(PYTHON) run.py -m experiment=maxfit runs_root=$(RUNS) $(ARGS); $(REPORT_AFTER)

maxfit-gpu: install
	$(PYTHON) run.py -m experiment=maxfit_gpu runs_root=$(RUNS) $(ARGS); $(REPORT_AFTER)

composability: install
	$(PYTHON) run.py -m experiment=composability runs_root=$(RUNS) $(ARGS); $(REPORT_AFTER)

robustness: install
	$(PYTHON) run.py -m experiment=robustness_bitflip runs_root=$(RUNS) $(ARGS); \
	bitflip=$$?; $(PYTHON) run.py -m experiment=robustness_fgsm runs_root=$(RUNS) $(ARGS); \
	fgsm=$$?; test $$bitflip -eq 0 -a $$fgsm -eq 0; $(REPORT_AFTER)
