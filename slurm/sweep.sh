#!/bin/bash
#SBATCH --job-name=cifar-sweep
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --open-mode=append
#SBATCH --output=%x-%A_%a.out
#
# One run of a sweep per array task: the task index picks the cell and the seed.
#
#   cifar-dist sweep plan slurm/grids/seed001_grid.yaml     # the cells and the exact command, e.g.
#   sbatch --job-name=seed001_grid --array=0-215%8 --output=runs/seed001_grid/slurm/%A_%a.out \
#       slurm/sweep.sh slurm/grids/seed001_grid.yaml
#   cifar-dist sweep submit slurm/grids/seed001_grid.yaml   # the same, for the unfinished runs only
#
# Index: array index = cell position x len(seeds) + seed position; `cifar-dist sweep resolve
# GRID INDEX` prints the run's train flags. A run with result.json is skipped; any other run starts with
# --resume=auto and continues from its last checkpoint.
#
# Hardware: one training process per usable GPU (accelerate launch with launch/1gpu.yaml or
# launch/multi_gpu.yaml). With no GPU allocated, or GPUs that torch cannot use (device_count() == 0),
# it trains on the CPU with CIFAR_DIST_CPU_PROCS processes (default 1 = plain python; 2+ = launch/cpu.yaml).
# The defaults above are for a GPU cluster; command-line options beat them, e.g.
# `--gpus-per-node=0 --cpus-per-task=2` for CPU nodes (or put them in the spec's `sbatch:` list).
#
# Preemption and time limits: SLURM sends USR1 to this script 120 s before the time limit
# (--signal=B:USR1@120; by hand: scancel --signal=USR1 --batch JOB_TASK). The script sends SIGTERM to the
# trainer (the trainer treats TERM and USR1 alike; accelerate/torchrun forwards TERM to its workers but
# would die on USR1), which saves a checkpoint and exits; the task then requeues itself
# (scontrol requeue <array job>_<task>) and the next attempt resumes from the checkpoint. On TERM
# (scancel, or SLURM preempting or requeueing the job on its own) the trainer checkpoints the same way,
# but the task does not requeue itself: a cancel stays a cancel, and SLURM requeues what it preempts.
# Each attempt writes <run>/sweep_task.json (state running/done/preempted/failed) for `sweep status`.
#
# Search specs (`search:`, see `cifar-dist sweep --help`): array task i is search worker i
# (`sbatch --array=0-(P-1) slurm/sweep.sh SPEC` for P workers). The script runs
# `cifar-dist sweep worker SPEC --worker=<array job>_<task>` with the trainer launcher chosen below in
# CIFAR_DIST_LAUNCH; the worker claims trials of the study, trains each with that launcher and stops when
# none is left (exit 0). USR1/TERM reach the worker, which checkpoints its trial and keeps it for this task
# id, so the requeued task resumes the same trial. Worker task files: <sweep>/workers/<i>/sweep_task.json.
#
# Environment (all optional):
#   CIFAR_DIST_PYTHON     python with cifar_dist's dependencies (default: python on PATH)
#   CIFAR_DIST_ROOT       the repository, or <prefix>/share/cifar_dist of an installed wheel: the directory
#                         with launch/ and slurm/ (default: the submit directory; `sweep submit` sets it when needed)
#   CIFAR_DIST_CPU_PROCS  training processes when training on the CPU (default 1)
#   CIFAR_DIST_GPUS       number of usable GPUs, skipping the torch check
#   CIFAR_DIST_DRY_RUN=1  print the training command and stop
set -u

GRID=${1:?usage: sbatch --array=0-N%P slurm/sweep.sh GRID.yaml   (or: slurm/sweep.sh GRID.yaml INDEX)}
INDEX=${2:-${SLURM_ARRAY_TASK_ID:-}}
if [[ -z $INDEX ]]; then
    echo "sweep.sh: no array index: submit with sbatch --array=... or pass INDEX after GRID" >&2
    exit 2
fi
ROOT=${CIFAR_DIST_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
if [[ ! -f $ROOT/launch/cpu.yaml ]]; then
    echo "sweep.sh: $ROOT has no launch/cpu.yaml (not the cifar_dist repository or share/cifar_dist); set CIFAR_DIST_ROOT" >&2
    exit 2
fi
if [[ -d $ROOT/cifar_dist ]]; then  # a source checkout: its code first (an installed wheel needs no path)
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1  # log lines reach the output file as they happen (and survive a kill)
PY=${CIFAR_DIST_PYTHON:-python}
if [[ -n ${SLURM_ARRAY_JOB_ID:-} ]]; then
    JOB=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
else
    JOB=${SLURM_JOB_ID:-none}
fi

got=""    # the signal that asked this task to stop (USR1 or TERM)
child=""  # pid of the trainer (or of its launcher)
forward() {
    got=$1
    echo "sweep.sh: got SIG$1; asking the trainer to save a checkpoint and stop"
    if [[ -n $child ]]; then kill -TERM "$child" 2>/dev/null; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

quote() {  # the arguments as one shell line, quoting only where needed
    local out=() a q="'"
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./=:,%@+-]+$ ]]; then out+=("$a"); else out+=("$q${a//$q/$q\\$q$q}$q"); fi
    done
    echo "${out[*]}"
}

write_task() {  # state exit-status: <run>/sweep_task.json, replaced atomically
    local tmp="$run_dir/.sweep_task.json.$$"
    printf '{"state": "%s", "exit": %s, "job": "%s", "host": "%s", "pid": %d, "time": %d}\n' \
        "$1" "$2" "$JOB" "$(hostname -s)" "$$" "$(date +%s)" > "$tmp" && mv -f "$tmp" "$run_dir/sweep_task.json"
}

echo "sweep.sh: $GRID index $INDEX, job $JOB on $(hostname -s), attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 ))"
resolved=$("$PY" -m cifar_dist sweep resolve "$GRID" "$INDEX" --shell) || exit 2
worker=0
eval "$resolved"  # run_name, run_dir, cell, seed, finished, train_args=(...); worker=1 for a search
if [[ $finished == 1 ]]; then
    if [[ $worker == 1 ]]; then echo "sweep.sh: skip $run_name: the search has no trial left"; exit 0; fi
    echo "sweep.sh: skip $run_name: finished ($run_dir/result.json)"
    exit 0
fi

gpus=${CIFAR_DIST_GPUS:-}
if [[ -z $gpus ]]; then
    gpus=0
    if [[ ${SLURM_GPUS_ON_NODE:-0} != 0 || -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
        gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null) || gpus=0
        [[ $gpus =~ ^[0-9]+$ ]] || gpus=0
    fi
fi
port=$(( 20000 + ${SLURM_JOB_ID:-$$} % 20000 ))  # two tasks on one node must not share a rendezvous port
launch=("$PY" -m accelerate.commands.launch --main_process_port "$port")
if (( gpus > 1 )); then
    cmd=("${launch[@]}" --config_file "$ROOT/launch/multi_gpu.yaml" --num_processes "$gpus" -m cifar_dist.train)
elif (( gpus == 1 )); then
    cmd=("${launch[@]}" --config_file "$ROOT/launch/1gpu.yaml" -m cifar_dist.train)
else
    procs=${CIFAR_DIST_CPU_PROCS:-1}
    if (( procs > 1 )); then
        cmd=("${launch[@]}" --config_file "$ROOT/launch/cpu.yaml" --num_processes "$procs" -m cifar_dist.train)
    else
        cmd=("$PY" -m cifar_dist.train)
    fi
fi
if [[ $worker == 1 ]]; then  # the launcher above trains each trial; the worker runs here
    CIFAR_DIST_LAUNCH=$(quote "${cmd[@]}")
    export CIFAR_DIST_LAUNCH
    cmd=("$PY" -m cifar_dist "${train_args[@]}")
    if [[ $JOB == none ]]; then  # under SLURM the worker names itself <array job>_<task>
        cmd+=(--worker="task-$INDEX")
    fi
    echo "sweep.sh: search worker ${JOB/none/task-$INDEX}; trainer launcher: $CIFAR_DIST_LAUNCH"
else
    cmd+=("${train_args[@]}")
fi
echo "sweep.sh: $run_name: usable GPUs $gpus (allocated ${SLURM_GPUS_ON_NODE:-0}, CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-})"
echo "sweep.sh: $(quote "${cmd[@]}")"
if [[ ${CIFAR_DIST_DRY_RUN:-0} == 1 ]]; then
    exit 0
fi

mkdir -p "$run_dir"
write_task running null
rc=0
if [[ -z $got ]]; then
    # In the background, so that the traps run while we wait (bash runs them only between commands).
    "${cmd[@]}" &
    child=$!
    wait "$child"
    rc=$?
    while [[ -n $got ]] && (( rc > 128 )); do  # wait was interrupted by a trap: wait for the checkpoint
        wait "$child"
        r=$?
        (( r == 127 )) && break  # already collected
        rc=$r
    done
    child=""
fi

if [[ $worker == 1 ]] && (( rc == 0 )); then
    write_task done "$rc"
    echo "sweep.sh: $run_name: no trial left"
    exit 0
fi
if [[ -f $run_dir/result.json ]]; then
    write_task done "$rc"
    echo "sweep.sh: $run_name finished"
    exit 0
fi
if [[ $got == USR1 ]]; then
    write_task preempted "$rc"
    if [[ $JOB == none ]]; then
        echo "sweep.sh: $run_name stopped (exit $rc); not a SLURM job, nothing to requeue"
        exit 3
    fi
    echo "sweep.sh: $run_name stopped (exit $rc); requeueing $JOB to resume from the checkpoint"
    scontrol requeue "$JOB" && exit 0
    echo "sweep.sh: scontrol requeue $JOB failed; resubmit the sweep to resume" >&2
    exit 3
fi
if [[ $got == TERM ]]; then
    write_task preempted "$rc"
    echo "sweep.sh: $run_name stopped by SIGTERM (exit $rc); resubmit (or SLURM's requeue) resumes it"
    exit 3
fi
write_task failed "$rc"
echo "sweep.sh: $run_name failed: trainer exit status $rc, no result.json" >&2
exit $(( rc == 0 ? 1 : rc ))
