#!/usr/bin/env bash
# The first-GPU check: FFCV and tensor loaders on the GPU (device of every batch asserted), `fast` for 2 epochs
# in bf16 with and without torch.compile, SIGTERM mid-epoch under
# `accelerate launch --config_file launch/1gpu.yaml` then a resume; prints one table with the images/s of each.
# One GPU, under 10 minutes. Needs the prepared data (`make data`).
#
#   bash bench/gpu_check.sh [--data_dir data] [--name cifar10] [--out DIR] [--launch launch/1gpu.yaml]
#
# Exit status: 0 every check passed, 1 a check failed (see the table and the logs in the output folder),
# 2 no usable GPU or no data (nothing was run).
# Interpreter: $CIFAR_DIST_PYTHON, else the repository's .venv, else python3.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${CIFAR_DIST_PYTHON:-}
if [[ -z $PY ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "gpu_check: $PY cannot import torch; run \`make setup\` or set CIFAR_DIST_PYTHON" >&2
    exit 2
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    seen=$(nvidia-smi -L 2>/dev/null | head -n 1)
    echo "gpu_check: no usable GPU (torch.cuda.is_available() is False${seen:+; nvidia-smi lists: $seen}): this check needs one CUDA GPU; nothing was run" >&2
    exit 2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" "$ROOT/bench/gpu_check.py" "$@"
