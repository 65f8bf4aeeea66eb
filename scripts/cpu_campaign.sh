#!/usr/bin/env bash
# Every experiment whose results are committed in results/, redrawn on a CPU into one runs root, then one report.
#   bash scripts/cpu_campaign.sh RUNS_ROOT REPORT_DIR        (make cpu-campaign RUNS=... REPORT=...)
# Two lanes share the machine: the training sweeps (demo, maxfit, composability single-process and under torchrun on
# 2 gloo ranks, robustness) in one, the memory plans (meta device, one core) in the other. A sweep that fails does not
# stop the others: its failed runs are counted by the report, and the script exits non-zero at the end. Each sweep's
# command, wall time and exit status go to RUNS_ROOT/campaign.log.
set -u
runs=${1:?usage: cpu_campaign.sh RUNS_ROOT REPORT_DIR}
report=${2:?usage: cpu_campaign.sh RUNS_ROOT REPORT_DIR}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$runs"
log="$runs/campaign.log"
echo "# cpu campaign at commit $(git rev-parse HEAD 2>/dev/null || echo unknown), $(date -u '+%F %T UTC'), $(uname -n)," \
     "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'), $(nproc) cores" >>"$log"

# One sweep: its command, wall time and exit status appended to the log; returns the sweep's status.
sweep() {
    local start status out
    start=$(date +%s)
    out="$runs/sweep-$start-$RANDOM.out"
    "$@" runs_root="$runs" logger=disabled >"$out" 2>&1
    status=$?
    echo "$(date -u '+%T') rc=$status $(( $(date +%s) - start ))s: $* runs_root=$runs logger=disabled (output: $out)" >>"$log"
    return $status
}

training_lane() {
    local failed=0
    sweep "$python" run.py -m experiment=demo || failed=1
    sweep "$python" run.py -m experiment=maxfit || failed=1
    sweep "$python" run.py -m experiment=composability || failed=1
    sweep "$python" -m torch.distributed.run --standalone --nproc_per_node=2 run.py -m experiment=composability \
        composability=eager,checkpointing,zero1,fsdp2 || failed=1
    sweep "$python" run.py -m experiment=robustness_bitflip || failed=1
    sweep "$python" run.py -m experiment=robustness_fgsm || failed=1
    return $failed
}

plan_lane() {
    local failed=0 name
    for name in memory_plan memory_plan_batch memory_plan_maxfit memory_plan_context; do
        OMP_NUM_THREADS=1 sweep "$python" run.py -m experiment=$name || failed=1
    done
    return $failed
}

training_lane & training=$!
plan_lane & plan=$!
wait $training; training_status=$?
wait $plan; plan_status=$?
"$python" -m scripts.report "$runs" --out "$report" --wandb disabled; report_status=$?
echo "$(date -u '+%T') training lane rc=$training_status, plan lane rc=$plan_status, report rc=$report_status" >>"$log"
test $training_status -eq 0 -a $plan_status -eq 0 -a $report_status -eq 0
