# make install | lock | demo | test | test-gpu-stack | lint | report | suite1 | suite2 | suites-check | gpu-campaign |
# memory-plan | maxfit | maxfit-gpu | composability | robustness | cpu-campaign | gpu-check | gpu-check-wheels | docs
# Extra Hydra overrides go in ARGS, e.g. `make suite1 ARGS="trainer.device=cuda"`; the campaign's size in SCALE.
PYTHON3 ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
LOCK := requirements.lock
STAMP := $(VENV)/.installed
# The second tested stack, the GPU machine's (requirements-gpu-stack.in): its own environment, on Python 3.12.
GPU_STACK_VENV := .venv-gpu-stack
GPU_STACK_PYTHON := $(GPU_STACK_VENV)/bin/python
GPU_STACK_LOCK := requirements-gpu-stack.lock
GPU_STACK_STAMP := $(GPU_STACK_VENV)/.installed
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12))
RUNS ?= runs
# Reports go next to the runs they describe; the committed results/ is redrawn only on purpose (make report REPORT=results).
REPORT ?= $(RUNS)/report
SCALE ?= full
ARGS ?=
# After a sweep: the report of every run under RUNS goes to REPORT, also when a run failed (it counts failed runs);
# make still fails then, with the sweep's exit status.
REPORT_AFTER = status=$$?; $(PYTHON) -m scripts.report $(RUNS) --out $(REPORT) && exit $$status

# uv looks for packages where pip is configured to (pip.conf or PIP_* variables: a local mirror or wheel folder, as
# where torch's wheels lie on disk), and like pip takes the best match across those indexes.
pip_setting = $(shell $(PYTHON3) -m pip config list 2>/dev/null | sed -n "s/^[^ ]*\.$(1)='\(.*\)'$$/\1/p")
UV_SOURCES := $(addprefix --index-url ,$(call pip_setting,index-url)) \
	$(addprefix --extra-index-url ,$(call pip_setting,extra-index-url)) \
	$(addprefix --find-links ,$(sort $(call pip_setting,find-links))) --index-strategy unsafe-best-match

.PHONY: install lock demo test test-gpu-stack lint report suite1 suite2 suites-check gpu-campaign memory-plan maxfit \
	maxfit-gpu composability robustness cpu-campaign gpu-check gpu-check-wheels docs

install: $(STAMP)

# The environment is the lock file's, exactly (hashes checked): `uv pip sync` installs what it lists and removes what it
# does not; then the library itself, editable. Redone when the lock or pyproject.toml changes.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(PYTHON) || $(PYTHON3) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet uv==$(UV_VERSION)
	$(UV) pip sync --quiet --python $(PYTHON) $(UV_SOURCES) $(LOCK)
	$(UV) pip install --quiet --python $(PYTHON) --no-deps --editable .
	touch $@

# The GPU machine's stack, as `make install` builds the lock's, from $(GPU_STACK_LOCK) on Python 3.12.
$(GPU_STACK_STAMP): $(GPU_STACK_LOCK) pyproject.toml
	@test -n "$(PYTHON312)" || { echo "no python3.12 found: make $@ PYTHON312=/path/to/python3.12"; exit 1; }
	test -x $(GPU_STACK_PYTHON) || $(PYTHON312) -m venv $(GPU_STACK_VENV)
	$(GPU_STACK_PYTHON) -m pip install --quiet uv==$(UV_VERSION)
	$(GPU_STACK_VENV)/bin/uv pip sync --quiet --python $(GPU_STACK_PYTHON) $(UV_SOURCES) $(GPU_STACK_LOCK)
	$(GPU_STACK_VENV)/bin/uv pip install --quiet --python $(GPU_STACK_PYTHON) --no-deps --editable .
	touch $@

# The locks: requirements.lock from pyproject.toml's ranges (harness, dev and fused extras), for every platform and
# Python >= 3.11, with torch at the build the project is tested with; versions already in the lock are kept unless a
# range excludes them. PyPI is asked first: uv reads a version from the first index that has it, and a local mirror
# may hold one platform's wheels only (torch 2.14.1 for cp311 x86_64), which would lock no torch for the other
# Pythons. Then $(GPU_STACK_LOCK), the GPU machine's stack, for its Python and platform only.
lock:
	test -x $(UV) || { test -x $(PYTHON) || $(PYTHON3) -m venv $(VENV); $(PYTHON) -m pip install --quiet uv==$(UV_VERSION); }
	printf 'torch==2.14.1\ntorchvision==0.29.1\n' | $(UV) pip compile --extra-index-url https://pypi.org/simple $(UV_SOURCES) pyproject.toml - --extra harness --extra dev \
		--extra fused --universal --python-version 3.11 --generate-hashes --output-file $(LOCK)
	$(UV) pip compile --extra-index-url https://pypi.org/simple $(UV_SOURCES) requirements-gpu-stack.in \
		--python-version 3.12 --python-platform x86_64-manylinux_2_28 --generate-hashes --output-file $(GPU_STACK_LOCK)

test: install
	$(PYTHON) -m pytest -n 2

# tests/core and the harness's tests on the GPU machine's stack (torch 2.11, Triton 3.6, transformers 5.17), less
# those that need a package that stack lacks (wandb, hydra's joblib and submitit launchers; the tests that need
# `datasets` skip themselves). Where torch 2.11 behaves otherwise, the tests say what each version gives.
GPU_STACK_LEFT_OUT := --ignore=tests/harness/test_wandb.py --ignore=tests/harness/test_launchers.py \
	--ignore=tests/harness/test_runner_e2e.py $(addprefix --deselect=tests/harness/,test_configs.py::test_launchers \
	test_ddp.py::test_a_torchrun_sweep_writes_one_results_file_and_one_wandb_run_per_job_and_resumes)

test-gpu-stack: $(GPU_STACK_STAMP)
	$(GPU_STACK_PYTHON) -m pytest -n 2 tests/core tests/harness $(GPU_STACK_LEFT_OUT)

lint: install
	$(PYTHON) -m ruff check .

# TinyBERT x synthetic pairs x 5 exact variants x seeds 0-4 on the CPU, then the report.
demo: install
	$(PYTHON) run.py -m experiment=demo runs_root=$(RUNS) $(ARGS); $(REPORT_AFTER)

report: install
	$(PYTHON) -m scripts.report $(RUNS)/ --out $(REPORT)/

# The paper's suites, on real data (see conf/workload/ for the data paths each needs) and a GPU.
suite1: install
	$(PYTHON) run.py -m experiment=suite1 runs_root=$(RUNS) $(ARGS)

suite2: install
	$(PYTHON) run.py -m experiment=suite2 runs_root=$(RUNS) $(ARGS)

# Every job of suite1 and suite2 checked as configured, offline, on a CPU, in minutes: the sweep's own checks for the
# target device, the checkpoint's architecture (conf/checkpoints/), the data source, the peak memory planned at the
# real shape against the device memory; the table also goes to $(REPORT)/suites_check.md. Exit 1 if a job cannot run.
# ARGS takes its options and overrides, e.g. ARGS="--device-memory-gb 141 --require-data dataset.data_files=...".
suites-check: install
	$(PYTHON) -m experiments.suites_check --out $(REPORT)/suites_check.md runs_root=$(RUNS) $(ARGS)

# Memory and step time at the paper's shapes on synthetic data. SCALE=full: for a GPU; SCALE=smoke: minutes on a CPU.
gpu-campaign: install
	$(PYTHON) run.py -m experiment=gpu_campaign campaign/scale=$(SCALE) runs_root=$(RUNS) $(ARGS)

# Peak memory at the paper's shapes planned on the meta device with CUDA's semantics (no GPU needed): every shape x
# variant, planned peak against batch size, and the largest batch / context within 80 GB; then the report.
memory-plan: install
	$(PYTHON) run.py -m experiment=memory_plan runs_root=$(RUNS) logger=disabled $(ARGS); \
	plan=$$?; $(PYTHON) run.py -m experiment=memory_plan_batch runs_root=$(RUNS) logger=disabled $(ARGS); \
	batch=$$?; $(PYTHON) run.py -m experiment=memory_plan_maxfit runs_root=$(RUNS) logger=disabled $(ARGS); \
	fit=$$?; $(PYTHON) run.py -m experiment=memory_plan_context runs_root=$(RUNS) logger=disabled $(ARGS); \
	context=$$?; test $$plan -eq 0 -a $$batch -eq 0 -a $$fit -eq 0 -a $$context -eq 0; $(REPORT_AFTER)

# The other experiments, each followed by the report: largest batch/context per variant (CPU: saved-bytes budget;
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

# Everything results/ holds, redrawn on a CPU into RUNS (about an hour on 2 cores), then the report into REPORT:
# make cpu-campaign RUNS=/tmp/campaign REPORT=results. A failed sweep does not stop the others (scripts/cpu_campaign.sh).
cpu-campaign: install
	PYTHON=$(PYTHON) bash scripts/cpu_campaign.sh $(RUNS) $(REPORT)

# The GPU check as one time-bounded run on a machine with CUDA (scripts/gpu_check.sh): CUDA tests, kernel timings,
# training steps at the paper's shapes and their memory plan, side by side. Without CUDA its GPU steps say so and skip.
gpu-check:
	OUT=$${OUT:-gpu_check_out} bash scripts/gpu_check.sh

# What the GPU machine lacks for the harness, as the wheels gpu_check.sh installs from .whl/ there: hydra-core,
# omegaconf and antlr4 at the GPU stack lock's versions (pure Python, about 0.4 MB of the device tool's 64 MiB).
GPU_CHECK_WHEELS := hydra-core omegaconf antlr4-python3-runtime
gpu-check-wheels: $(GPU_STACK_STAMP)
	rm -rf .whl
	$(GPU_STACK_PYTHON) -m pip wheel --quiet --no-deps --wheel-dir .whl \
		$(foreach name,$(GPU_CHECK_WHEELS),$(name)==$(shell sed -n 's/^$(name)==\([^ ]*\) .*/\1/p' $(GPU_STACK_LOCK)))
	du -ch .whl/*.whl | tail -1

# The documentation site (mkdocs.yml, docs/) into site/, warnings as errors: a broken link, a docstring griffe cannot
# read, a public name missing from docs/api.md. Its tools live in their own venv, pinned by docs/requirements.txt, so
# the locked .venv is never touched; the API reference is read from the sources, without importing torch.
DOCS_VENV := .venv-docs
docs: $(DOCS_VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict --quiet

$(DOCS_VENV)/.installed: docs/requirements.txt
	@$(PYTHON3) -c 'import sys; sys.exit(sys.version_info < (3, 11, 5) and f"make docs: the pinned tools need Python >= 3.11.5, $(PYTHON3) is {sys.version.split()[0]}; set PYTHON3=python3.X")'
	test -x $(DOCS_VENV)/bin/python || $(PYTHON3) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python -m pip install --quiet -r docs/requirements.txt
	touch $@
