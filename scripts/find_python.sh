#!/usr/bin/env bash
# Print the path of a Python interpreter of version $NUCDET_PYTHON (default 3.11; 3.12 also
# works): $PYTHON, then PATH, then pyenv, then conda. Exits 1 with a clear message when none is found.
set -u
want="${NUCDET_PYTHON:-3.11}"
case "$want" in
  3.11|3.12) ;;
  *) echo "nucdet: NUCDET_PYTHON=$want: nucdet supports Python 3.11 (default) and 3.12" >&2; exit 1 ;;
esac
major=${want%%.*}; minor=${want#*.}
isv() {
  [ -n "$1" ] && [ -x "$1" ] &&
    "$1" -c "import sys; sys.exit(sys.version_info[:2] != ($major, $minor))" 2>/dev/null
}
cands=()
if [ -n "${PYTHON:-}" ]; then
  p=$(command -v "$PYTHON" || echo "$PYTHON")
  if ! isv "$p"; then
    echo "nucdet: PYTHON=$PYTHON is not a Python $want interpreter" \
      "(it is: $("$p" --version 2>&1 || echo 'not runnable'))." \
      "Give a Python $want, or NUCDET_PYTHON=3.12 with a 3.12 interpreter." >&2
    exit 1
  fi
  "$p" -c 'import sys; print(sys.executable)'; exit 0
fi
for n in "python$want" python3 python; do
  p=$(command -v "$n" 2>/dev/null) && cands+=("$p")
done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root 2>/dev/null)
  for v in $(pyenv versions --bare 2>/dev/null | grep -E "^${major}\\.${minor}(\\.|$)" | sort -V -r); do
    cands+=("$root/versions/$v/bin/python$want")
  done
fi
for d in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want"* 2>/dev/null | sort -V -r); do
  cands+=("$d/bin/python$want")
done
if command -v conda >/dev/null 2>&1; then
  for e in $(conda env list 2>/dev/null | awk '!/^#/ && NF {print $NF}'); do cands+=("$e/bin/python$want"); done
fi
for d in "${CONDA_PREFIX:-/nonexistent}" /opt/conda /opt/miniconda3 "$HOME/miniconda3" "$HOME/anaconda3"; do
  cands+=("$d/bin/python$want")
done
for c in "${cands[@]}"; do
  if isv "$c"; then "$c" -c 'import sys; print(sys.executable)'; exit 0; fi
done
cat >&2 <<MSG
nucdet: no Python $want found (looked at \$PYTHON, PATH, pyenv and conda).
nucdet needs Python $want (torch $want wheels and detectron2 built from source for it).
Install one, e.g. 'pyenv install $want' or 'conda create -n py$major$minor python=$want',
or point to it: make setup PYTHON=/path/to/python$want
MSG
exit 1
