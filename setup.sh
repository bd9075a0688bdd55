#!/usr/bin/env bash
# Creates .venv (Python 3.10+) and installs drpo-bench with its test tools and Ray (--executor ray).
# torch/torchvision come pinned from constraints.txt: from PyPI that is torch +cu130 with the nvidia-*
# CUDA packages (a ~6 GB .venv). CPU-only machine: install torch/torchvision from
# https://download.pytorch.org/whl/cpu first (README, Quick start); `pip install -e .` alone works with
# pyproject's looser ranges.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,ray]"
echo "setup: drpo-bench installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
