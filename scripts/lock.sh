#!/usr/bin/env bash
# Writes constraints.txt: every package the Docker image installs, pinned, resolved for the image's platform
# (CPython 3.12 on Linux x86-64, PyTorch's CUDA build from PyPI) from pyproject.toml's dependencies and
# TORCH_VERSION. The Dockerfile installs with it, and so does scripts/setup-venv.sh, so the tests run the
# versions the image ships (the CPU build of the same PyTorch release here; the CUDA libraries only there).
#   scripts/lock.sh                       resolve the newest versions pyproject.toml allows
#   scripts/lock.sh "transformers==5.24"  ... holding some back (any extra pip requirement)
# Needs pip and the package index; downloads only metadata.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
mapfile -t deps < <("$python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
platforms=()
for glibc in 17 18 24 25 26 27 28 31 34; do platforms+=(--platform "manylinux_2_${glibc}_x86_64"); done
report=$(mktemp)
trap 'rm -f "$report"' EXIT
"$python" -m pip install --dry-run --ignore-installed --quiet --report "$report" --target "$(mktemp -d)" \
  --python-version 3.12 --implementation cp --only-binary=:all: "${platforms[@]}" --platform manylinux2014_x86_64 \
  "${deps[@]/#torch*/torch==$TORCH_VERSION}" "$@"
"$python" - "$report" <<'PY' > constraints.txt
import json, sys
packages = sorted(
    (item["metadata"]["name"], item["metadata"]["version"]) for item in json.load(open(sys.argv[1]))["install"]
)
cuda = next(version for name, version in packages if name == "nvidia-cuda-runtime")
print("# Every package the Docker image installs, pinned (scripts/lock.sh writes this file; do not edit by hand).")
print(f"# PyTorch's CUDA build from PyPI: CUDA runtime {cuda}. Host: NVIDIA driver 580 or newer (CUDA 13.0).")
print("# scripts/setup-venv.sh installs with it too, so the tests run these versions.")
for name, version in packages:
    print(f"{name}=={version}")
PY
echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages" >&2
