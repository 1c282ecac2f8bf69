#!/usr/bin/env bash
# The first-GPU check (bench/gpu_check.py says what each row proves): the loaders on the GPU, `fast` for 10 epochs
# in bf16 (test and TTA accuracy, training seconds, launch-to-first-step seconds), with compile, on the FFCV
# loader, SIGTERM mid-epoch then --resume=auto, every other preset for one epoch on a 5,000-image cut.
# One GPU, at most 5 minutes (--budget_s); each row is printed when it ends, a trainer that dies ends its row at
# once with the last 20 lines of its log. Needs the prepared data (`make data`).
#
#   bash bench/gpu_check.sh [--data_dir data] [--name cifar10] [--out DIR] [--launch launch/1gpu.yaml] [--budget_s 300]
#
# Exit status: 0 every row passed, 1 a row failed (see its lines and the logs in the output folder),
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
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" "$ROOT/bench/gpu_check.py" "$@"
