#!/bin/bash
#SBATCH --job-name=cifar-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#
# One configuration on several nodes: srun starts one `accelerate launch` per node (launch/multi_node.yaml),
# each starting one training process per GPU; DDP spans every GPU of every node. Arguments are the
# trainer's flags; --resume=auto is added, so a requeued job continues from its checkpoint.
#
#   sbatch slurm/train.sh --preset=fast --run.name=fast-16gpu
#   sbatch --nodes=4 --gpus-per-node=4 slurm/train.sh --preset=seed002_tpsnet --run.name=tpsnet-16gpu
#   sbatch --nodes=2 --gpus-per-node=0 --cpus-per-task=1 slurm/train.sh --preset=smoke   # CPU nodes
#
# The #SBATCH lines above are for a GPU cluster (8 GPUs, 32 CPUs per node); on other nodes override them
# on the command line as in the last example (a GPU request is refused where the partition has no GPUs).
# Flags are checked before any node is started: a bad flag prints the trainer's one-line error, exit 2.
#
# Rendezvous: the main process is on the first node of the allocation, at that node's address as SLURM
# knows it (`scontrol show node NAME` -> NodeAddr; the name itself only if SLURM has no address), port
# 20000 + job id mod 20000 (or $CIFAR_DIST_PORT); each node's launcher gets --machine_rank $SLURM_NODEID.
# Processes per node = the GPUs torch can use on the first node (device_count() over the GPUs SLURM made
# visible); with none, CIFAR_DIST_CPU_PROCS processes per node (default 1) in fp32 (--mixed_precision no
# overrides the launch file's bf16) over gloo. The run directory (--run.out_dir) must be on a file system
# every node sees: the script checks that with one srun step before training and stops (exit 2) if not.
#
# Signals, who gets what:
# - `--signal=B:USR1@120` sends USR1 to this batch shell 120 s before the time limit (by hand:
#   `scancel --signal=USR1 --batch JOB`). The shell passes it on with `scancel --signal=USR1 JOB`, which
#   slurmstepd delivers to every process of the job's steps on every node (not to the batch shell): the
#   trainers catch it, the launchers ignore it (slurm/lib.sh). Every trainer saves its part of the
#   checkpoint at the next check and stops with status 3 (status.json; the process exits 0, see
#   slurm/lib.sh); when the step has ended the job requeues itself and the
#   next start resumes. The shell repeats the USR1 every 10 s until the step ends (a trainer still
#   starting up ignores it). The shell never signals srun: srun turns a TERM into a step kill (SIGKILL
#   after KillWait), which would lose the checkpoint.
# - `--signal=USR1@120` (no `B:`) also works: SLURM then signals the step processes directly, the
#   trainers stop with status 3, and the script requeues on that recorded status.
# - TERM (scancel, preemption, `scontrol requeue JOB` = preemption by hand) reaches every process of the job
#   from slurmstepd: the trainers checkpoint the same way within KillWait, and the job does not requeue
#   itself (a cancel stays a cancel; after a requeue, SLURM's, the last line says "SLURM requeued").
# Exit status: the trainer's own, read from <run_dir>/status.json (rank 0 writes it; `accelerate launch`
# and srun report 1 for any trainer failure); 0 after a requeue (its own or SLURM's); 3 when stopped and not
# requeued.
#
# Environment (all optional): CIFAR_DIST_PYTHON, CIFAR_DIST_ROOT, CIFAR_DIST_CPU_PROCS, CIFAR_DIST_GPUS
# (usable GPUs per node, skipping the torch check), CIFAR_DIST_PORT, CIFAR_DIST_DRY_RUN=1 (print the
# commands and stop) -- as in slurm/sweep.sh.
set -u

if (( $# == 0 )); then
    echo "usage: sbatch [--nodes=N] slurm/train.sh --preset=NAME --run.name=NAME [--section.key=value ...]" >&2
    exit 2
fi
if [[ -z ${SLURM_JOB_ID:-} && ${CIFAR_DIST_DRY_RUN:-0} != 1 ]]; then
    # Run by hand, not by sbatch: say in one line how to submit it on this cluster. The #SBATCH lines above ask
    # for 8 GPUs per node, which a partition without GPU gres refuses ("Invalid generic resource").
    if command -v sinfo >/dev/null 2>&1 && parts=$(sinfo -h -o '%P|%c|%G' 2>/dev/null) && [[ -n $parts ]]; then
        default=$(grep -m 1 '^[^|]*\*|' <<< "$parts" || head -n 1 <<< "$parts")
        IFS='|' read -r part cpus gres <<< "$default"
        if [[ $gres == *gpu* ]]; then
            echo "train.sh: submit it: sbatch [--nodes=N] [--gpus-per-node=G] slurm/train.sh $*" >&2
        else
            echo "train.sh: submit it: partition ${part%\*} has no GPUs, so override the #SBATCH GPU request:" \
                 "sbatch --nodes=N --gpus-per-node=0 --cpus-per-task=${cpus%+} slurm/train.sh $*" >&2
        fi
    else
        echo "train.sh: submit it with sbatch (no SLURM here): sbatch [--nodes=N] slurm/train.sh $*" >&2
    fi
    exit 2
fi
ROOT=${CIFAR_DIST_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
if [[ ! -f $ROOT/launch/cpu.yaml ]]; then
    echo "train.sh: $ROOT has no launch/cpu.yaml (not the cifar_dist repository or share/cifar_dist); set CIFAR_DIST_ROOT" >&2
    exit 2
fi
if [[ -d $ROOT/cifar_dist ]]; then  # a source checkout: its code first (an installed wheel needs no path)
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
PY=${CIFAR_DIST_PYTHON:-python}
SCRIPT=train.sh
source "$ROOT/slurm/lib.sh"

stop_trainers() {  # USR1 to every process of the job's steps on every node (the batch shell excluded); after
                   # a TERM nothing: slurmstepd has sent TERM to every process of the job already, and the job,
                   # ending, refuses signals ("Invalid job id specified")
    if [[ $STOP == TERM ]]; then return 0; fi
    scancel --signal=USR1 "$SLURM_JOB_ID" || echo "train.sh: scancel --signal=USR1 $SLURM_JOB_ID failed" >&2
}
trap 'on_stop USR1' USR1
trap 'on_stop TERM' TERM

node_addr() {  # the address SLURM has for node $1 (NodeAddr); the name when it has none
    local addr
    addr=$(scontrol show node "$1" 2>/dev/null | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)
    echo "${addr:-$1}"
}

check_python
nodes=${SLURM_NNODES:-1}
first=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n 1)
main_addr=$(node_addr "$first")
port=${CIFAR_DIST_PORT:-$(( 20000 + ${SLURM_JOB_ID:-0} % 20000 ))}
gpus=$(usable_gpus)
precision=()
cpu_flags=()
per_node=$gpus
if (( gpus == 0 )); then
    per_node=${CIFAR_DIST_CPU_PROCS:-1}
    precision=(--mixed_precision no)  # this is a CPU: fp32 (bf16 autocast is ~10x slower there)
    cpu_flags=(--run.allow_cpu=true)  # on the CPU on purpose, even where the job shows unusable GPUs
fi

# One launcher per node: the same command everywhere, with the node's own $SLURM_NODEID as machine rank;
# it ignores USR1 and TERM (slurmstepd starts tasks with default dispositions), its trainers catch them.
# The log shows rank 0 of node 0 only: the other nodes' standard output (their banner and epoch lines, the
# same as node 0's) goes to /dev/null; their standard error (errors, tracebacks) stays.
node_cmd='trap "" USR1 TERM; if [ "$SLURM_NODEID" != 0 ]; then exec >/dev/null; fi; exec "$0" -m accelerate.commands.launch --quiet --machine_rank "$SLURM_NODEID" "$@"'
export CIFAR_DIST_STOP_EXIT_0=1  # a stopped trainer exits 0 (its 3 is in status.json): no srun/torchrun report
srun_cmd=(srun --quiet --nodes="$nodes" --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}"
          --kill-on-bad-exit=1 bash -c "$node_cmd" "$PY"
          --config_file "$ROOT/launch/multi_node.yaml" --num_machines "$nodes"
          --num_processes "$(( nodes * per_node ))" --main_process_ip "$main_addr" --main_process_port "$port"
          "${precision[@]}" -m cifar_dist.train "$@" "${cpu_flags[@]}" --resume=auto)
say_plan() {
    echo "train.sh: $nodes node(s) x $per_node process(es) ($gpus usable GPUs per node), main $main_addr:$port (node $first)"
    echo "train.sh: $(quote "${srun_cmd[@]}")"
}
if [[ ${CIFAR_DIST_DRY_RUN:-0} == 1 ]]; then
    say_plan
    exit 0
fi

# The run directory, from the resolved config; a bad flag stops here with the trainer's one-line error (and
# nothing else: the plan is printed once the flags are good).
config=$("$PY" -m cifar_dist.train "$@" --print_config) || exit 2
say_plan
run_dir=$("$PY" -c 'import os, sys, yaml
run = yaml.safe_load(sys.stdin)["run"]
print(os.path.join(str(run["out_dir"]), str(run["name"])))' <<< "$config") || exit 2
mkdir -p "$run_dir"
rm -f "$run_dir/status.json"  # a status left by an earlier start must not be read as this one's
if (( nodes > 1 )); then  # every rank reads and writes the run directory: it must be the same one everywhere
    marker="$run_dir/.shared-check-${SLURM_JOB_ID:-0}"
    touch "$marker"
    if ! srun --nodes="$nodes" --ntasks-per-node=1 --cpus-per-task=1 test -f "$marker"; then
        rm -f "$marker"
        echo "train.sh: $run_dir is not visible on every node (a node-local file system?); put --run.out_dir" \
             "on a file system all nodes share" >&2
        exit 2
    fi
    rm -f "$marker"
fi

if [[ -z $STOP ]]; then
    start_child "${srun_cmd[@]}"
    wait_child
else
    RC=3
fi
status=$(recorded_status "$run_dir")
status=${status:-$RC}
if [[ $status == 0 ]]; then
    echo "train.sh: finished ($run_dir)"
    exit 0
fi
if [[ -n ${SLURM_JOB_ID:-} ]] && [[ $STOP == USR1 || ( -z $STOP && $status == 3 ) ]]; then
    echo "train.sh: stopped (exit $status); requeueing job $SLURM_JOB_ID to resume from the checkpoint"
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    echo "train.sh: scontrol requeue $SLURM_JOB_ID failed; submit again to resume" >&2
    exit 3
fi
if [[ $STOP == TERM ]]; then
    if requeued_by_slurm; then  # scontrol requeue JOB, or a preemption that requeues
        echo "train.sh: stopped by SIGTERM (exit $status); SLURM requeued job $SLURM_JOB_ID: its next start" \
             "resumes from the checkpoint"
        exit 0
    fi
    echo "train.sh: stopped by SIGTERM (exit $status); submit again to resume"
    exit 3
fi
echo "train.sh: trainer exit status $status ($run_dir)"
exit "$status"
