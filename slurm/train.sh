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
#
# Rendezvous: the first host of $SLURM_JOB_NODELIST (scontrol show hostnames) is the main process, port
# 20000 + job id mod 20000 (or $CIFAR_DIST_PORT); each node's launcher gets --machine_rank $SLURM_NODEID.
# GPUs that torch cannot use (device_count() == 0 on the first node) fall back to the CPU:
# CIFAR_DIST_CPU_PROCS processes per node (default 1), fp32, gloo.
#
# Preemption: USR1 (120 s before the time limit, or scancel --signal=USR1 --batch JOB) is passed to srun
# as SIGTERM, srun forwards it to every node's launcher, which forwards it to its workers; they save a
# checkpoint and exit, then the job requeues itself. TERM (scancel) checkpoints the same way without
# a requeue.
#
# Environment (all optional): CIFAR_DIST_PYTHON, CIFAR_DIST_ROOT, CIFAR_DIST_CPU_PROCS, CIFAR_DIST_GPUS
# (usable GPUs per node, skipping the torch check), CIFAR_DIST_PORT, CIFAR_DIST_DRY_RUN=1 (print the
# commands and stop) -- as in slurm/sweep.sh.
set -u

if (( $# == 0 )); then
    echo "usage: sbatch [--nodes=N] slurm/train.sh --preset=NAME --run.name=NAME [--section.key=value ...]" >&2
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

nodes=${SLURM_NNODES:-1}
main_addr=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n 1)
port=${CIFAR_DIST_PORT:-$(( 20000 + ${SLURM_JOB_ID:-0} % 20000 ))}
gpus=${CIFAR_DIST_GPUS:-}
if [[ -z $gpus ]]; then
    gpus=0
    if [[ ${SLURM_GPUS_ON_NODE:-0} != 0 ]]; then
        gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null) || gpus=0
        [[ $gpus =~ ^[0-9]+$ ]] || gpus=0
    fi
fi
precision=()
per_node=$gpus
if (( gpus == 0 )); then
    per_node=${CIFAR_DIST_CPU_PROCS:-1}
    precision=(--mixed_precision no)  # this is a CPU: fp32 (bf16 autocast is ~10x slower there)
fi

# One launcher per node: the same command everywhere, with the node's own $SLURM_NODEID as machine rank.
rank_and_exec='exec "$0" -m accelerate.commands.launch --machine_rank "$SLURM_NODEID" "$@"'
srun_cmd=(srun --nodes="$nodes" --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}"
          --kill-on-bad-exit=1 bash -c "$rank_and_exec" "$PY"
          --config_file "$ROOT/launch/multi_node.yaml" --num_machines "$nodes"
          --num_processes "$(( nodes * per_node ))" --main_process_ip "$main_addr" --main_process_port "$port"
          "${precision[@]}" -m cifar_dist.train "$@" --resume=auto)
quote() {  # the arguments as one shell line, quoting only where needed
    local out=() a q="'"
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./=:,%@+-]+$ ]]; then out+=("$a"); else out+=("$q${a//$q/$q\\$q$q}$q"); fi
    done
    echo "${out[*]}"
}
echo "train.sh: $nodes node(s) x $per_node process(es) ($gpus usable GPUs per node), main $main_addr:$port"
echo "train.sh: $(quote "${srun_cmd[@]}")"
if [[ ${CIFAR_DIST_DRY_RUN:-0} == 1 ]]; then
    exit 0
fi

got=""
child=""
forward() {
    got=$1
    echo "train.sh: got SIG$1; asking the trainers to save a checkpoint and stop"
    if [[ -n $child ]]; then kill -TERM "$child" 2>/dev/null; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

"${srun_cmd[@]}" &
child=$!
wait "$child"
rc=$?
while [[ -n $got ]] && (( rc > 128 )); do
    wait "$child"
    r=$?
    (( r == 127 )) && break
    rc=$r
done
if [[ $got == USR1 && -n ${SLURM_JOB_ID:-} ]]; then
    echo "train.sh: stopped (exit $rc); requeueing job $SLURM_JOB_ID to resume from the checkpoint"
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    exit 3
fi
exit "$rc"
