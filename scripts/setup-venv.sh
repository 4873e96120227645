#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment: PyTorch first, then the project itself.
#   scripts/setup-venv.sh VENV_DIR [EXTRAS]     e.g. scripts/setup-venv.sh .venv dev
#   SETUP_PLAN_ONLY=1 scripts/setup-venv.sh .venv   says what it would install, and why, and installs nothing
#
# Which PyTorch build, and why:
#   - a machine where nvidia-smi sees a GPU: the default build from the package index (CUDA included, ~2.5 GB);
#   - macOS: the default build (CPU and Apple's Metal, ~80 MB);
#   - any other machine (CPU-only Linux, ...): the CPU build from PyTorch's own CPU index (~200 MB); if that
#     index cannot be reached, the default index, with a warning, because on Linux that is the CUDA build.
# Every package is installed within constraints.txt (scripts/lock.sh), the versions the Docker image ships, so the
# tests run what ships; PyTorch is the release it pins (its CPU build here, its CUDA build in the image).
# PYTHON picks the interpreter (3.11 or newer).
set -euo pipefail
venv=${1:-.venv}
extras=${2:-}
constraints="$(cd "$(dirname "$0")/.." && pwd)/constraints.txt"
TORCH_CPU_VERSION=$(sed -n 's/^torch==//p' "$constraints")
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
python=${PYTHON:-python3}
system=${SETUP_UNAME:-$(uname -s)}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  found=$("$python" --version 2>&1 || echo "no $python")
  echo "Python 3.11 or newer is needed; found: $found. Install it, or set PYTHON=/path/to/python3.11." >&2
  exit 1
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  torch_build=cuda
  why="nvidia-smi found an NVIDIA GPU"
elif [ "$system" = "Darwin" ]; then
  torch_build=default
  why="macOS: PyTorch's default build runs on the CPU and on Apple's GPU (mps)"
else
  torch_build=cpu
  why="no NVIDIA GPU found, so the small CPU build (answers will be slow: use it to try things out)"
fi

if [ "${SETUP_PLAN_ONLY:-}" = "1" ]; then
  echo "python: $("$python" --version 2>&1)"
  echo "torch: $torch_build ($why)"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "PyTorch: $why."
  case "$torch_build" in
    cuda)
      echo "Installing PyTorch with CUDA (about 2.5 GB) ..."
      "${pip[@]}" install --progress-bar on -c "$constraints" torch
      ;;
    default)
      echo "Installing PyTorch ..."
      "${pip[@]}" install --progress-bar on -c "$constraints" torch
      ;;
    cpu)
      echo "Installing PyTorch $TORCH_CPU_VERSION for the CPU from $TORCH_CPU_INDEX (about 200 MB) ..."
      if ! "${pip[@]}" install --progress-bar on --timeout 20 --retries 1 \
        --index-url "$TORCH_CPU_INDEX" "torch==$TORCH_CPU_VERSION"; then
        echo "WARNING: PyTorch's CPU index could not be used; installing torch $TORCH_CPU_VERSION from the" \
          "default index instead. On Linux that is the CUDA build (about 2.5 GB more to download); it runs" \
          "on the CPU all the same." >&2
        "${pip[@]}" install --progress-bar on "torch==$TORCH_CPU_VERSION"
      fi
      ;;
  esac
fi

target="."
[ -n "$extras" ] && target=".[$extras]"
echo "Installing the project ($target) ..."
"${pip[@]}" install -q -c "$constraints" -e "$target"
