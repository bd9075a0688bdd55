#!/usr/bin/env bash
# Builds the second virtualenv that holds the official ImageReward package (PyPI `image-reward`,
# THUDM/ImageReward), for tests/test_imagereward_official.py and for users who serve it with
# `drpo-bench serve-reward imagereward-package`.
#
# Why a separate environment: the package's code (BLIP's med.py) imports helpers that transformers
# removed after 4.x, and it pins timm 0.6.13 and fairscale 0.4.13; this project runs transformers 5.
# Everything below is pinned to releases known to import together on Python 3.11.
#
# Usage: bash scripts/make_imagereward_env.sh [VENV]   (default: $IMAGEREWARD_VENV, else .venv-imagereward)
# Serve from it:  PYTHONPATH=$PWD VENV/bin/python -m drpo_bench serve-reward imagereward-package --port 8766 \
#                   [--arg checkpoint=/path/ImageReward.pt --arg med_config=/path/med_config.json]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${IMAGEREWARD_VENV:-.venv-imagereward}}
PY=${PYTHON:-python3}
start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# torch/torchvision: the project's own pins (constraints.txt; on this project's machines they lie on disk)
"${PIP[@]}" -c constraints.txt torch torchvision
# the package's imports (ImageReward/__init__ pulls in ReFL, CLIPScore, AestheticScore too), pinned
"${PIP[@]}" -c constraints.txt \
  "numpy==1.26.4" "transformers==4.36.2" "huggingface-hub==0.20.3" "timm==0.6.13" \
  "diffusers==0.25.1" "accelerate==0.26.1" "datasets==2.16.1" "pyarrow==15.0.2" "clip-anytorch==2.6.0" \
  "safetensors==0.4.5" "setuptools<81" wheel
# what drpo-bench's serve-reward imports there (run with PYTHONPATH=<checkout> or `pip install --no-deps -e .`)
"${PIP[@]}" -c constraints.txt "pydantic==2.10.6" "pyyaml==6.0.2" "scipy==1.13.1" "rich==13.9.4"
# fairscale ships only a source archive that imports torch to build: build it against the torch above
"${PIP[@]}" -c constraints.txt --no-build-isolation "fairscale==0.4.13"
# the package itself, without its loose requirement list (everything it imports is above)
"${PIP[@]}" --no-deps "image-reward==1.5"
"$VENV/bin/python" -c "import ImageReward, transformers, torch; print('ImageReward env:', '$VENV', 'transformers', transformers.__version__, 'torch', torch.__version__)"
PYTHONPATH=$PWD "$VENV/bin/python" -c "import drpo_bench.commands.serve, drpo_bench.commands.main"  # serve-reward imports there
echo "built in $(( $(date +%s) - start )) s"
