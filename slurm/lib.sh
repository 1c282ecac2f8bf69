# Shared by slurm/sweep.sh and slurm/train.sh; sourced from $ROOT (sbatch runs a copy of the script, so
# the script cannot find this file next to itself). Needs: PY (the python), SCRIPT (name for messages).
#
# How a stop reaches the trainers (both scripts):
# - The training command runs with USR1 and TERM ignored (SIG_IGN is inherited through exec): the
#   launchers (`accelerate launch`, its torchrun agent, the 1-process Popen path, which forwards nothing)
#   never die of a stop signal and stay until their trainers end. The trainer installs its own USR1/TERM
#   handler (cifar_dist.train), which replaces the inherited SIG_IGN; it then saves a checkpoint at its
#   next check and exits 3 -- or 0 where the script sets CIFAR_DIST_STOP_EXIT_0=1 (the 3 is in status.json):
#   torchrun and srun take any other status for a crash and print failure reports ("FAILED ... exitcode: 3",
#   "task 0: Exited with exit code 1") over a normal stop, and torchrun would stop the ranks still saving.
# - torchrun's agent (inside `accelerate launch` for 2+ processes) installs its own handler for each signal
#   of its --signals-to-handle option (torch 2.14 default SIGTERM,SIGINT,SIGHUP,SIGQUIT) when it starts its
#   workers, which replaces the inherited SIG_IGN: on TERM it would log "Received 15 death signal, shutting
#   down workers", TERM its workers and exit 143. That option's default is read from PET_SIGNALS_TO_HANDLE
#   (torch's argparse `env` action); torch/distributed/launcher/api.py then overwrites
#   TORCHELASTIC_SIGNALS_TO_HANDLE with the option's value, so setting that variable has no effect.
#   PET_SIGNALS_TO_HANDLE below leaves TERM out: the agent keeps TERM ignored, and TERM reaches the trainers
#   only from whoever sent it (slurmstepd sends a cancel's or requeue's TERM to every process of the job).
#   tests/test_slurm_cluster2.py reads the agent's /proc/PID/status (SigIgn/SigCgt) to check it.
# - The batch shell's trap sends USR1 to the trainers themselves (sweep.sh: every process below the
#   launcher that runs cifar_dist.train and has a USR1 handler; train.sh: `scancel --signal=USR1 JOB`,
#   which slurmstepd delivers to every process of the job steps on every node, not to the batch shell)
#   and repeats that every RESIGNAL seconds until the command ends: a trainer still importing torch
#   ignores USR1 until its handler is installed. The trainer ignores USR1/TERM again once it is only
#   exiting (Python would reset its handler to SIG_DFL at exit, and a late USR1 would kill it).
# - The scripts wait until the command is gone (a loop on the pid, never on `wait`'s status: bash 5.2's
#   `wait PID` on an already reaped child returns the old status again, not 127), then read the true
#   status from <run_dir>/status.json (the launcher's own status says only "failed or not").

export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGINT,SIGHUP,SIGQUIT}  # torchrun: leave TERM ignored
# torchrun's grace between TERM and SIGKILL when it stops its workers (a failed rank; INT, HUP, QUIT) must
# cover a checkpoint plus an evaluation; SLURM's own KillWait still bounds it on a cancel.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-900}
RESIGNAL=10  # seconds between two rounds of stop_trainers while the command runs (a script may lower it)

STOP=""      # USR1 or TERM once one arrived
CHILD=""     # pid of the training command (launcher or trainer)
RC=0         # its exit status, set by wait_child
SIGNALLED=() # trainer pids sent USR1 (sweep.sh), waited for if their launcher went first

quote() {  # the arguments as one shell line, quoting only where needed
    local out=() a q="'"
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./=:,%@+-]+$ ]]; then out+=("$a"); else out+=("$q${a//$q/$q\\$q$q}$q"); fi
    done
    echo "${out[*]}"
}

check_python() {  # exit 2 with one line when $PY cannot run the trainer
    local missing hint="set CIFAR_DIST_PYTHON to the python of cifar_dist's environment"
    if ! command -v "$PY" >/dev/null 2>&1; then
        echo "$SCRIPT: python '$PY' not found; $hint" >&2
        exit 2
    fi
    if ! missing=$("$PY" -c 'import importlib.util as u
print(", ".join(m for m in ("cifar_dist", "torch", "accelerate", "ffcv", "yaml") if u.find_spec(m) is None))' 2>&1)
    then
        missing="its modules (${missing##*$'\n'})"
    fi
    if [[ -n $missing ]]; then
        echo "$SCRIPT: $PY cannot import $missing; $hint" >&2
        exit 2
    fi
}

usable_gpus() {  # GPUs torch can use here: CIFAR_DIST_GPUS, else device_count() when SLURM gave GPUs
    local n=${CIFAR_DIST_GPUS:-}
    if [[ -z $n ]]; then
        n=0
        if [[ ${SLURM_GPUS_ON_NODE:-0} != 0 || -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
            n=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null) || n=0
        fi
    fi
    [[ $n =~ ^[0-9]+$ ]] || n=0
    echo "$n"
}

start_child() {  # run "$@" in the background with USR1 and TERM ignored (see the top); sets CHILD
    ( trap '' USR1 TERM; exec "$@" ) &
    CHILD=$!
}

on_stop() {  # trap: remember the signal, ask the trainers to stop (stop_trainers is the script's)
    STOP=$1
    echo "$SCRIPT: got SIG$1; asking the trainer(s) to save a checkpoint and stop"
    if [[ -n $CHILD ]]; then stop_trainers; fi
}

wait_child() {  # until CHILD is gone; RC = its exit status (never loops on wait's status)
    local r n=0 pid end
    while kill -0 "$CHILD" 2>/dev/null; do
        if [[ -z $STOP ]]; then
            wait "$CHILD"  # returns when the command ends, or early when a trap has run
            RC=$?
            if (( RC == 127 )); then break; fi  # not our child (any more): its pid was reused
        else  # stopping: ask again every RESIGNAL seconds (the first time at once) until the command ends
            if (( n++ % RESIGNAL == 0 )); then stop_trainers; fi
            sleep 1 &
            wait $!
        fi
    done
    wait "$CHILD"  # bash keeps the status of a child it reaped; 127 if this bash forgot it
    r=$?
    (( r == 127 )) || RC=$r
    end=$(( SECONDS + 300 ))  # trainers outliving their launcher (it should never happen)
    for pid in "${SIGNALLED[@]}"; do
        while kill -0 "$pid" 2>/dev/null && (( SECONDS < end )); do sleep 1; done
    done
    CHILD=""
}

recorded_status() {  # the exit status the trainer recorded in $1/status.json; empty when none
    sed -n 's/.*"exit": *\([0-9][0-9]*\).*/\1/p' "$1/status.json" 2>/dev/null | head -n 1
}

requeued_by_slurm() {  # true when SLURM is requeueing this job (scontrol requeue, preemption with requeue): the
                       # job's Restarts count is already above the one this attempt started with
    local n
    [[ -n ${SLURM_JOB_ID:-} ]] || return 1
    n=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/.*Restarts=\([0-9][0-9]*\).*/\1/p' | head -n 1)
    [[ -n $n ]] && (( n > ${SLURM_RESTART_COUNT:-0} ))
}
