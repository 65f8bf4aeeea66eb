#!/usr/bin/env bash
# The GPU check, in one prepared run: CUDA tests, kernel timings, training steps at the paper's shapes, and the memory
# plan of the same shapes, so that planned and measured peaks sit side by side.
#
#   OUT=/tmp/gpu_check BUDGET_S=540 bash scripts/gpu_check.sh          # on the GPU machine (`make gpu-check`)
#   OUT=/tmp/gpu_check STEPS="tests bench" bash scripts/gpu_check.sh   # only some steps
#
# Steps, in order: tests (pytest -m cuda), bench (python -m benchmarks.bench_gpu, fp32 and bf16), steps (BERT-Large b32
# s512 and TinyBERT s128, bf16 AMP, baseline/pmdrop/seeded: max_memory_allocated and step time, via the harness),
# plan (experiment=memory_plan for the same shapes and variants, on the meta device), report (scripts.report over
# both). The whole run keeps inside BUDGET_S seconds: a step that cannot start with its minimum time left is skipped
# and says so; a step that runs out of time is stopped and marked "timed out" (its log is kept; results files are
# written atomically by the harness, so no run is half-written). Without CUDA, the CUDA steps are skipped with that
# reason and the rest still runs. Wheels for packages the machine lacks (hydra-core, omegaconf, antlr4) are installed
# from .whl/ when that folder exists. Everything lands in $OUT as at most 8 files: summary.txt first.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
BUDGET_S=${BUDGET_S:-540}
STEPS=${STEPS:-tests bench steps plan report}
PYTHON=${PYTHON:-python3}
SHAPES=${SHAPES:-bert_large_s512,tinybert_s128}
VARIANTS=${VARIANTS:-baseline,pmdrop,seeded}
mkdir -p "$OUT"
started=$(date +%s)
summary="$OUT/summary.txt"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

left() { echo $((BUDGET_S - ($(date +%s) - started))); }
say() { echo "$*" | tee -a "$summary"; }
wanted() { [[ " $STEPS " == *" $1 "* ]]; }

# run_step NAME MIN_SECONDS CMD...: runs CMD with its output in $OUT/NAME.log, bounded by the time left.
run_step() {
    local name=$1 need=$2
    shift 2
    wanted "$name" || return 0
    local budget
    budget=$(left)
    if ((budget < need)); then
        say "$name: skipped, ${budget} s left of ${BUDGET_S} s (needs at least ${need} s)"
        return 0
    fi
    local t0=$(date +%s) rc
    timeout --signal=INT --kill-after=10 "$((budget - 5))" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    local took=$(($(date +%s) - t0))
    if ((rc == 124)); then
        say "$name: timed out after ${took} s (log kept: $name.log)"
    else
        say "$name: exit $rc in ${took} s (log: $name.log)"
    fi
}

: >"$summary"
say "gpu_check at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%FT%TZ), budget ${BUDGET_S} s"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" \
        .whl/*.whl >"$work/wheels.log" 2>&1; then
        export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        say "the wheels in .whl/ did not install: $(tail -1 "$work/wheels.log")"
    fi
fi
"$PYTHON" - <<'EOF' | tee -a "$summary"
import torch
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, device {torch.cuda.get_device_name() if cuda else 'none'}")
EOF
if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    has_cuda=1
else
    has_cuda=0
    say "no CUDA device: tests/bench/steps run their CPU fallbacks only (CUDA tests skip, bench runs --smoke)"
fi

run_step tests 60 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/core
if ((has_cuda)); then
    run_step bench 90 "$PYTHON" -m benchmarks.bench_gpu --dtype fp32 bf16 --json "$OUT/bench_gpu.json"
else
    run_step bench 30 "$PYTHON" -m benchmarks.bench_gpu --smoke
fi

if "$PYTHON" -c "import hydra, omegaconf" 2>/dev/null; then
    if ((has_cuda)); then
        run_step steps 120 "$PYTHON" run.py -m experiment=gpu_campaign "campaign/shape=$SHAPES" "variant=$VARIANTS" \
            logger=disabled "runs_root=$work/runs"
    else
        run_step steps 60 "$PYTHON" run.py -m experiment=gpu_campaign campaign/scale=smoke trainer.device=cpu \
            "campaign/shape=$SHAPES" "variant=$VARIANTS" logger=disabled "runs_root=$work/runs"
    fi
    run_step plan 60 "$PYTHON" run.py -m experiment=memory_plan "campaign/shape=$SHAPES" "variant=$VARIANTS" \
        logger=disabled "runs_root=$work/runs"
    if [ -d "$work/runs" ]; then
        run_step report 30 "$PYTHON" -m scripts.report "$work/runs" --out "$work/report"
        tar -C "$work" -czf "$OUT/runs_and_report.tar.gz" runs $([ -d "$work/report" ] && echo report)
        say "runs and report: runs_and_report.tar.gz"
    fi
else
    for name in steps plan report; do
        wanted "$name" && say "$name: skipped, hydra-core/omegaconf not importable (put their wheels in .whl/)"
    done
fi
say "done in $(($(date +%s) - started)) s"
