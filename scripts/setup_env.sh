#!/usr/bin/env bash
# Create or update the nucdet virtual environment. Safe to re-run: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
DETECTRON2=${DETECTRON2:-sal-detectron2==0.7.2}
if [ ! -x "$VENV/bin/python" ]; then
  PY310=$(bash scripts/find_python.sh) || exit 1
  echo "nucdet: creating $VENV with $PY310"
  "$PY310" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))'; then
  echo "nucdet: $VENV uses $("$PY" --version); Python 3.10 is required. Remove $VENV and re-run." >&2
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
echo "nucdet: installing torch/torchvision (first time: ~2.5 GB download, cached afterwards)"
pip_install -q -r requirements-torch.txt
if [ "$DETECTRON2" = "none" ]; then
  echo "nucdet: DETECTRON2=none: using the detectron2 already installed in $VENV"
else
  echo "nucdet: installing detectron2 from '$DETECTRON2'"
  pip_install -q "$DETECTRON2" -c requirements-torch.txt
fi
pip_install -q -r requirements.txt -r requirements-dev.txt -c requirements-torch.txt
pip_install -q --no-deps -e .
"$PY" - <<'PY'
import torch, detectron2
from detectron2 import _C  # noqa: F401  (fails here if the compiled ops do not match torch)
print(f"nucdet: environment ready: torch {torch.__version__}, detectron2 {detectron2.__version__}")
PY
