#!/usr/bin/env bash
# Rewrite requirements-lock.txt from the packages installed in $VENV (default .venv), leaving
# out the torch family (requirements-torch.txt), detectron2 (built from source) and nucdet.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
{
  sed -n '1,3p' requirements-lock.txt
  "$VENV/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check 2>/dev/null |
    grep -viE "^(pip|torch|torchvision|triton|detectron2|nucdet)[=<>~ ]|^(nvidia|cuda)-"
} > requirements-lock.txt.tmp
mv requirements-lock.txt.tmp requirements-lock.txt
