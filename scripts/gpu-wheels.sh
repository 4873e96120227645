#!/usr/bin/env bash
# Downloads, into .whl/, the Python packages bench/gpu_suite.sh needs beyond what a GPU machine with PyTorch
# already has (Triton, tokenizers and safetensors come with it; transformers may be older there, and the bot's
# own packages are not needed), for a GPU machine that cannot reach the internet. Run it on a machine that can,
# then copy the checkout with .whl/ to the GPU machine:
#
#   bash scripts/gpu-wheels.sh          # here, once; ~14 MB
#   bash bench/gpu_run.sh               # there: installs them into /tmp/site and runs the suite
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
