#!/usr/bin/env bash
# Runs the tests that touch transformers against another transformers release than the one in .venv:
#   scripts/test-transformers.sh VERSION [BASE_VENV]      e.g. scripts/test-transformers.sh 5.23.0
# CI runs it with the lowest release pyproject.toml allows, while .venv has the newest, so a release
# that breaks us is seen before users see it. The extra venv reuses everything installed in BASE_VENV
# (torch and the rest, through a .pth file) and installs only transformers itself, so it is quick.
set -euo pipefail
version=${1:?usage: scripts/test-transformers.sh VERSION [BASE_VENV]}
base=${2:-.venv}
venv=".venv-transformers-$version"
python=${PYTHON:-python3}

base_site=$("$base/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
own_site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$base_site" > "$own_site/_base_venv.pth"  # after this venv's own packages on sys.path
echo "Testing against transformers $version (everything else from $base) ..."
"$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps "transformers==$version"
"$venv/bin/python" - "$version" <<'PY'
import sys

import transformers
from packaging.version import Version

assert Version(transformers.__version__) == Version(sys.argv[1]), transformers.__version__
PY
# Left out: the inference tests that never reach transformers (the remote client, the block pool, the queue,
# image checks, the paged kernels on their own and under Triton's interpreter).
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/inference tests/cogs/test_end_to_end.py \
    --ignore=tests/inference/test_remote.py --ignore=tests/inference/serving/test_block_pool.py \
    --ignore=tests/inference/serving/test_scheduler.py --ignore=tests/inference/test_images.py \
    --ignore=tests/inference/kernels/test_attention_backends.py \
    --ignore=tests/inference/kernels/test_triton_interpreter.py
