#!/usr/bin/env bash
# Downloads, into .whl/, the Python packages the lent GPU machine lacks for bench/gpu_suite.sh (it has PyTorch,
# Triton, tokenizers and safetensors, but an older transformers and none of the bot's own packages, and it
# cannot reach the internet). Run it here, then carry .whl to the machine:
#
#   bash scripts/gpu-wheels.sh          # once per machine that prepares the run; ~14 MB
#   # device run, carry [".whl"]:
#   bash bench/gpu_run.sh               # installs them into /tmp/site and runs the suite into $OUT
#
# .whl/ is ignored by git (this script adds it to .git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
py=${PYTHON:-python3}
# Pure Python: one wheel serves the machine's Python 3.12. The suite needs only the inference side (its tests
# run with --noconftest, so the bot's Discord packages stay home); transformers' own needs are there already.
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
    "transformers==5.24.0" "pytest-asyncio==1.5.0"
ls -la .whl
du -sh .whl
