#!/usr/bin/env bash
# Print the path of a Python 3.10 interpreter: $PYTHON, then PATH, then pyenv, then conda.
# Exits 1 with a clear message when none is found.
set -u
want="3.10"
is310() { [ -n "$1" ] && [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; }
cands=()
[ -n "${PYTHON:-}" ] && cands+=("$(command -v "$PYTHON" || echo "$PYTHON")")
for n in python3.10 python3 python; do
  p=$(command -v "$n" 2>/dev/null) && cands+=("$p")
done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root 2>/dev/null)
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.|$)'); do cands+=("$root/versions/$v/bin/python3.10"); done
fi
for d in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do cands+=("$d"); done
if command -v conda >/dev/null 2>&1; then
  for e in $(conda env list 2>/dev/null | awk '!/^#/ && NF {print $NF}'); do cands+=("$e/bin/python3.10"); done
fi
for d in "${CONDA_PREFIX:-/nonexistent}" /opt/conda /opt/miniconda3 "$HOME/miniconda3" "$HOME/anaconda3"; do
  cands+=("$d/bin/python3.10")
done
for c in "${cands[@]}"; do
  if is310 "$c"; then echo "$c"; exit 0; fi
done
cat >&2 <<MSG
nucdet: no Python $want found (looked at \$PYTHON, PATH, pyenv and conda).
nucdet needs Python $want (the detectron2 wheel sal-detectron2==0.7.2 is built for cp310).
Install one, e.g. 'pyenv install 3.10' or 'conda create -n py310 python=3.10',
or point to it: make setup PYTHON=/path/to/python3.10
MSG
exit 1
