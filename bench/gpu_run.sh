#!/usr/bin/env bash
# On the lent GPU machine (see scripts/gpu-wheels.sh): install the carried wheels beside its PyTorch, then run
# bench/gpu_suite.sh with its outputs under $OUT (or bench-results/ when OUT is unset).
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed" >&2; exit 1; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
bash bench/gpu_suite.sh "${OUT:-bench-results}/bench" "$@"
