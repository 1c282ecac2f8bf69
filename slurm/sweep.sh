#!/bin/bash
#SBATCH --job-name=cifar-sweep
#SBATCH --nodes=1
#SBATCH --ntasks=1
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
#       --gpus-per-node=1 --cpus-per-task=8 slurm/sweep.sh slurm/grids/seed001_grid.yaml
#   cifar-dist sweep submit slurm/grids/seed001_grid.yaml   # the same, for the unfinished runs only
#
# Index: array index = cell position x len(seeds) + seed position; `cifar-dist sweep resolve
# GRID INDEX` prints the run's train flags. A run with result.json is skipped; any other run starts with
# --resume=auto and continues from its last checkpoint.
#
# Resources: the #SBATCH lines above ask for no GPU and SLURM's default CPUs, so the script is accepted
# by any cluster. `cifar-dist sweep submit` adds --gpus-per-node=1 where the partition has GPUs and
# --cpus-per-task=N within what a node has (cifar_dist/sweep/cluster.py); by hand, add them yourself.
# Hardware: one training process per usable GPU (accelerate launch with launch/1gpu.yaml, or
# launch/multi_gpu.yaml with --num_processes = the GPUs visible to the job). With no GPU allocated, or GPUs
# that torch cannot use (device_count() == 0), it trains on the CPU in fp32 with CIFAR_DIST_CPU_PROCS
# processes (default 1 = plain python; 2+ = launch/cpu.yaml).
#
# Signals, who gets what:
# - `--signal=B:USR1@120` sends USR1 to this batch shell 120 s before the time limit. (By hand, use
#   `cifar-dist sweep preempt GRID TASK`, i.e. `scontrol requeue JOB_TASK`: the TERM case below. On SLURM
#   22.05 `scancel --signal=USR1 --batch JOB_TASK` on an array with pending tasks, a %N limit, keeps
#   re-sending USR1 for minutes and fails with "Job can not be altered now".) Without `B:` SLURM would signal only job steps, and this
#   script starts none (the trainer runs inside the batch step), so nothing would arrive.
# - The shell sends USR1 to the trainer processes themselves, every process below the training command
#   that runs cifar_dist.train (torchrun starts its workers in sessions of their own, so a process-group
#   signal would miss them); the launchers ignore USR1 and TERM (slurm/lib.sh). The trainers save a
#   checkpoint at their next check and stop with status 3 (recorded in status.json; the process exits 0 under
#   CIFAR_DIST_STOP_EXIT_0, see slurm/lib.sh); after the command has ended the task requeues itself
#   (scontrol requeue <array job>_<task>) and the next attempt resumes from the checkpoint.
# - TERM (scancel, or SLURM preempting or requeueing the job on its own) goes from slurmstepd to every
#   process of the job; the trainers checkpoint the same way (within KillWait), the launchers wait for
#   them, and the task does not requeue itself: a cancel stays a cancel, and SLURM requeues what it preempts
#   or what `scontrol requeue` names (the log then says "SLURM requeued", and the task exits 0).
# Status: the trainer's true exit status comes from <run>/status.json (`accelerate launch` itself exits 1
# for any trainer failure); each attempt writes <run>/sweep_task.json (state running/done/preempted/failed,
# exit = the trainer's status, or the launcher's when the trainer recorded none, e.g. 137 after SIGKILL)
# for `sweep status`. The task's own exit status: 0 done (or requeued), 3 stopped, else the trainer's.
#
# Search specs (`search:`, see `cifar-dist sweep --help`): array task i is search worker i
# (`sbatch --array=0-(P-1) slurm/sweep.sh SPEC` for P workers). The script runs
# `cifar-dist sweep worker SPEC --worker=<array job>_<task>` with the trainer launcher chosen below in
# CIFAR_DIST_LAUNCH; the worker claims trials of the study, trains each with that launcher and stops when
# none is left (exit 0). USR1/TERM reach the worker, which checkpoints its trial and keeps it for this task
# id, so the requeued task resumes the same trial. Worker task files: <sweep>/workers/<i>/sweep_task.json.
#
# Environment (all optional):
#   CIFAR_DIST_PYTHON     python with cifar_dist's dependencies (default: python on PATH; `sweep submit`
#                         passes the interpreter it runs under)
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
SCRIPT=sweep.sh
source "$ROOT/slurm/lib.sh"
if [[ -n ${SLURM_ARRAY_JOB_ID:-} ]]; then
    JOB=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
else
    JOB=${SLURM_JOB_ID:-none}
fi

stop_trainers() {  # USR1, once, to each process of the training command that runs cifar_dist.train and
                   # catches USR1 now (one still starting up ignores it: it is asked again a second later)
    local todo=("$CHILD") p kids caught
    while (( ${#todo[@]} )); do
        p=${todo[0]}
        todo=("${todo[@]:1}")
        if [[ " ${SIGNALLED[*]} " != *" $p "* ]] && grep -qa 'cifar_dist\.train' "/proc/$p/cmdline" 2>/dev/null; then
            caught=$(sed -n 's/^SigCgt:[[:space:]]*//p' "/proc/$p/status" 2>/dev/null)
            if [[ -n $caught ]] && (( 0x$caught & (1 << 9) )) && kill -USR1 "$p" 2>/dev/null; then
                SIGNALLED+=("$p")  # bit 9 of SigCgt = signal 10 = USR1 has a handler
            fi
        fi
        if kids=$(pgrep -P "$p"); then todo+=($kids); fi
    done
}
RESIGNAL=1
trap 'on_stop USR1' USR1
trap 'on_stop TERM' TERM

write_task() {  # state exit-status: <run>/sweep_task.json, replaced atomically
    local tmp="$run_dir/.sweep_task.json.$$"
    printf '{"state": "%s", "exit": %s, "job": "%s", "host": "%s", "pid": %d, "time": %d}\n' \
        "$1" "$2" "$JOB" "$(hostname -s)" "$$" "$(date +%s)" > "$tmp" && mv -f "$tmp" "$run_dir/sweep_task.json"
}

echo "sweep.sh: $GRID index $INDEX, job $JOB on $(hostname -s), attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 ))"
check_python
resolved=$("$PY" -m cifar_dist sweep resolve "$GRID" "$INDEX" --shell) || exit 2
worker=0
eval "$resolved"  # run_name, run_dir, cell, seed, finished, sweep_dir, train_args=(...); worker=1 for a search
# The folder of the array's logs (sbatch --output=<sweep>/slurm/%A_%a.out): SLURM cannot open a task's log in a
# folder that does not exist and fails the task without a line, so the first task to run makes it for the rest.
mkdir -p "$sweep_dir/slurm"
if [[ $finished == 1 ]]; then
    if [[ $worker == 1 ]]; then echo "sweep.sh: skip $run_name: the search has no trial left"; exit 0; fi
    echo "sweep.sh: skip $run_name: finished ($run_dir/result.json)"
    exit 0
fi

gpus=$(usable_gpus)
port=$(( 20000 + ${SLURM_JOB_ID:-$$} % 20000 ))  # two tasks on one node must not share a rendezvous port
launch=("$PY" -m accelerate.commands.launch --quiet --main_process_port "$port")
cpu_flags=()  # on the CPU on purpose: the trainer must not refuse the GPUs this job shows but cannot use
if (( gpus > 1 )); then
    cmd=("${launch[@]}" --config_file "$ROOT/launch/multi_gpu.yaml" --num_processes "$gpus" -m cifar_dist.train)
elif (( gpus == 1 )); then
    cmd=("${launch[@]}" --config_file "$ROOT/launch/1gpu.yaml" -m cifar_dist.train)
else
    procs=${CIFAR_DIST_CPU_PROCS:-1}
    cpu_flags=(--run.allow_cpu=true)
    if (( procs > 1 )); then
        cmd=("${launch[@]}" --config_file "$ROOT/launch/cpu.yaml" --num_processes "$procs" --mixed_precision no
             -m cifar_dist.train)
    else
        cmd=("$PY" -m cifar_dist.train)
    fi
fi
if [[ $worker == 1 ]]; then  # the launcher above trains each trial; the worker runs here
    CIFAR_DIST_LAUNCH=$(quote "${cmd[@]}" "${cpu_flags[@]}")
    export CIFAR_DIST_LAUNCH
    cmd=("$PY" -m cifar_dist "${train_args[@]}")
    if [[ $JOB == none ]]; then  # under SLURM the worker names itself <array job>_<task>
        cmd+=(--worker="task-$INDEX")
    fi
    echo "sweep.sh: search worker ${JOB/none/task-$INDEX}; trainer launcher: $CIFAR_DIST_LAUNCH"
    unset CIFAR_DIST_STOP_EXIT_0  # the worker reads its trials' exit status 3
else
    cmd+=("${train_args[@]}" "${cpu_flags[@]}")
    # A stopped trainer exits 0 (the true 3 is in status.json): no launcher failure report over a normal stop.
    export CIFAR_DIST_STOP_EXIT_0=1
fi
echo "sweep.sh: $run_name: usable GPUs $gpus (allocated ${SLURM_GPUS_ON_NODE:-0}, CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-})"
echo "sweep.sh: $(quote "${cmd[@]}")"
if [[ ${CIFAR_DIST_DRY_RUN:-0} == 1 ]]; then
    exit 0
fi

mkdir -p "$run_dir"
rm -f "$run_dir/status.json"  # a status left by an earlier attempt must not be read as this one's
write_task running null
if [[ -z $STOP ]]; then
    start_child "${cmd[@]}"  # in the background, so that the traps run while we wait
    wait_child
else
    RC=3  # stopped before the trainer started; nothing to save
fi
status=$(recorded_status "$run_dir")
status=${status:-$RC}  # no record: killed (e.g. 137 = SIGKILL) or failed before it knew its run directory

if [[ $worker == 1 ]] && (( status == 0 )); then
    write_task done "$status"
    echo "sweep.sh: $run_name: no trial left"
    exit 0
fi
if [[ -f $run_dir/result.json ]]; then
    write_task done "$status"
    echo "sweep.sh: $run_name finished"
    exit 0
fi
if [[ $STOP == USR1 ]]; then
    write_task preempted "$status"
    if [[ $JOB == none ]]; then
        echo "sweep.sh: $run_name stopped (exit $status); not a SLURM job, nothing to requeue"
        exit 3
    fi
    echo "sweep.sh: $run_name stopped (exit $status); requeueing $JOB to resume from the checkpoint"
    scontrol requeue "$JOB" && exit 0
    echo "sweep.sh: scontrol requeue $JOB failed; resubmit the sweep to resume" >&2
    exit 3
fi
if [[ $STOP == TERM || $status == 3 ]]; then  # TERM, or a signal sent to the trainer itself
    write_task preempted "$status"
    if [[ $STOP == TERM ]] && requeued_by_slurm; then  # scontrol requeue (cifar-dist sweep preempt), preemption
        echo "sweep.sh: $run_name stopped by SIGTERM (exit $status); SLURM requeued $JOB: its next attempt" \
             "resumes from the checkpoint"
        exit 0
    fi
    echo "sweep.sh: $run_name stopped by ${STOP:+SIG}${STOP:-a signal to the trainer} (exit $status);" \
         "resubmit (or SLURM's requeue) resumes it"
    exit 3
fi
write_task failed "$status"
echo "sweep.sh: $run_name failed: trainer exit status $status, no result.json" >&2
exit $(( status == 0 ? 1 : status ))
