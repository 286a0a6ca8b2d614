#!/usr/bin/env bash
# Create or update the nucdet virtual environment. Safe to re-run: pip skips what is installed.
#   VENV          the environment folder (default .venv)
#   NUCDET_PYTHON 3.11 (default) or 3.12; PYTHON=/path/to/python to choose the interpreter
#   DETECTRON2    source (default: official detectron2 built from the pinned commit, see
#                 scripts/build_detectron2.sh), none (keep the one in the venv), or anything
#                 pip installs (your source tree, a wheel, a git URL)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
DETECTRON2=${DETECTRON2:-source}
want="${NUCDET_PYTHON:-3.11}"
start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  PYBIN=$(bash scripts/find_python.sh) || exit 1
  echo "nucdet: creating $VENV with $PYBIN"
  "$PYBIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$want')"; then
  echo "nucdet: $VENV uses $("$PY" --version); Python $want is wanted" \
    "(NUCDET_PYTHON=3.11 or 3.12). Remove $VENV and re-run." >&2
  exit 1
fi
# pip here warns about every missing local index folder; keep its real messages only.
pip_install() {
  local rc
  set +o pipefail
  "$PY" -m pip install --progress-bar off --disable-pip-version-check "$@" 2>&1 |
    { grep -v "is ignored: it is neither a file nor a directory" || true; }
  rc=${PIPESTATUS[0]}
  set -o pipefail
  return "$rc"
}
# Exact versions of the tested environment (torch's pins live in requirements-torch.txt).
CONS=(-c requirements-torch.txt -c requirements-lock.txt)
echo "nucdet: installing torch/torchvision (requirements-torch.txt)"
pip_install -q -r requirements-torch.txt
# Runtime and build requirements first: detectron2's build needs setuptools<81 in the venv.
pip_install -q -r requirements.txt -r requirements-dev.txt "${CONS[@]}"
case "$DETECTRON2" in
  none)
    echo "nucdet: DETECTRON2=none: using the detectron2 already installed in $VENV" ;;
  source)
    PY="$PY" CONSTRAINTS=requirements-lock.txt bash scripts/build_detectron2.sh ;;
  *)
    echo "nucdet: installing detectron2 from '$DETECTRON2'"
    pip_install -q "$DETECTRON2" "${CONS[@]}" ;;
esac
# What the environment test checks detectron2 against (tests/test_environment.py).
echo "$DETECTRON2" > "$VENV/.nucdet-detectron2"
pip_install -q --no-deps -e .
DETECTRON2="$DETECTRON2" "$PY" - "$(( $(date +%s) - start ))" <<'PY'
import importlib.metadata as md
import os
import sys

import detectron2
import torch
import torchvision
from detectron2 import _C  # noqa: F401  (fails here if the compiled ops do not match torch)

from nucdet.__about__ import DETECTRON2_COMMIT, parse_detectron2_version, torch_release

version = md.version("detectron2")
build = parse_detectron2_version(version)
if build is None:
    origin = f"not built by nucdet's set-up (DETECTRON2={os.environ['DETECTRON2']})"
elif not DETECTRON2_COMMIT.startswith(build["commit"]):
    sys.exit(f"nucdet: detectron2 {version} is not of the pinned commit {DETECTRON2_COMMIT}")
elif build["torch"] != torch_release(torch.__version__):
    sys.exit(f"nucdet: detectron2 {version} was built for torch {build['torch']}, "
             f"the venv has {torch.__version__}: remove the cached wheel and re-run")
else:
    origin = f"commit {DETECTRON2_COMMIT}"
print(f"nucdet: environment ready in {sys.argv[1]} s: Python {sys.version.split()[0]}, "
      f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"detectron2 {version} ({origin})")
PY
