#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment: PyTorch first, then the project itself.
#   scripts/setup-venv.sh VENV_DIR [EXTRAS]     e.g. scripts/setup-venv.sh .venv dev
# PyTorch: a machine with an NVIDIA driver gets the default (CUDA) build from PyPI. A machine without one
# gets TORCH_CPU_VERSION, which is the small CPU build wherever pip finds one (set PIP_EXTRA_INDEX_URL or
# PIP_FIND_LINKS to PyTorch's CPU wheels to avoid the multi-GB CUDA build on a CPU-only Linux machine).
set -euo pipefail
venv=${1:-.venv}
extras=${2:-}
TORCH_CPU_VERSION=${TORCH_CPU_VERSION:-2.13.0}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "Installing PyTorch (CUDA build) ..."
    "${pip[@]}" install "torch>=2.6"
  else
    echo "No NVIDIA GPU found: installing PyTorch $TORCH_CPU_VERSION for the CPU ..."
    "${pip[@]}" install "torch==$TORCH_CPU_VERSION"
  fi
fi

target="."
[ -n "$extras" ] && target=".[$extras]"
echo "Installing the project ($target) ..."
"${pip[@]}" install -e "$target"
