#!/usr/bin/env bash
# Install the official detectron2, built from source at the commit pinned in nucdet/__about__.py,
# into the environment of $PY (a venv's python that already has torch).
#
# The built wheel is cached outside the repository, keyed by commit, torch release, Python tag
# and machine ($NUCDET_WHEEL_CACHE, default ~/.cache/nucdet/wheels), so a second fresh clone on
# the same machine installs it without compiling. Where the source comes from, first match:
#   $D2_SOURCE                      a source folder, a tarball or a pip URL (git+https://...@commit)
#   the upstream git URL at the commit, when it can be reached
#   detectron2-<commit12>.tar.gz (a git archive of the commit) in $NUCDET_VENDOR if set, else in
#   ../shared/vendor/ (the developers' machines)
# D2_REPO_URL overrides the upstream URL (a mirror).
# The wheel's version is 0.6+git<commit12>.torch<torch release> (detectron2's D2_VERSION_SUFFIX).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PY:?PY must name the environment python}"
COMMIT=$(sed -n 's/^DETECTRON2_COMMIT = "\([0-9a-f]\{40\}\)".*/\1/p' nucdet/__about__.py)
REPO_URL=${D2_REPO_URL:-$(sed -n 's/^DETECTRON2_REPO = "\(.*\)"$/\1/p' nucdet/__about__.py)}
[ -n "$COMMIT" ] && [ -n "$REPO_URL" ] || { echo "nucdet: no DETECTRON2_COMMIT in nucdet/__about__.py" >&2; exit 1; }
SHORT=${COMMIT:0:12}
TORCH=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
PYTAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
CACHE=${NUCDET_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nucdet/wheels}
KEY="detectron2-$SHORT-torch$TORCH-$PYTAG-$(uname -m)"
CONSTRAINTS=${CONSTRAINTS:-requirements-lock.txt}

pip_q() {  # pip, without its warnings about the machine's absent local index folders
  local rc
  set +o pipefail
  "$PY" -m pip --disable-pip-version-check "$@" 2>&1 |
    { grep -v "is ignored: it is neither a file nor a directory" || true; }
  rc=${PIPESTATUS[0]}
  set -o pipefail
  return "$rc"
}

cached=$(ls "$CACHE/$KEY"/detectron2-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$cached" ]; then
  echo "nucdet: detectron2 $SHORT for torch $TORCH / $PYTAG: cached wheel $cached (no compile)"
else
  CXX_BIN=${CXX:-c++}
  if ! command -v "$CXX_BIN" >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
    cat >&2 <<MSG
nucdet: no C++ compiler found (looked for \$CXX='${CXX:-}', c++ and g++): detectron2 is built
from source and needs one. Install it (Debian/Ubuntu: apt-get install g++; conda: conda install
gxx_linux-64), or give a prebuilt wheel: make setup DETECTRON2=/path/to/detectron2-*.whl
MSG
    exit 1
  fi
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/nucdet-d2-build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  src=""
  vendor=""
  vdir=${NUCDET_VENDOR:-../shared/vendor}
  if [ -f "$vdir/detectron2-$SHORT.tar.gz" ]; then vendor="$vdir/detectron2-$SHORT.tar.gz"; fi
  if [ -n "${D2_SOURCE:-}" ]; then
    # The wheel will be labelled with the pinned commit: the source must be that commit.
    src=$D2_SOURCE
    case "$src" in
      *.tar.gz|*.tgz) got=$(gzip -dc "$src" | git get-tar-commit-id 2>/dev/null || true) ;;
      git+*) got=${src##*@} ;;
      *) got=$(git -C "$src" rev-parse HEAD 2>/dev/null || true) ;;
    esac
    if [ "$got" != "$COMMIT" ]; then
      echo "nucdet: D2_SOURCE=$src is not detectron2 commit $COMMIT (it is: '${got:-unknown}');" \
        "for another detectron2 use make setup DETECTRON2=$src" >&2
      exit 1
    fi
    echo "nucdet: detectron2 source: D2_SOURCE=$src"
  elif timeout 30 env GIT_TERMINAL_PROMPT=0 git ls-remote "$REPO_URL" HEAD >/dev/null 2>&1; then
    src="git+$REPO_URL@$COMMIT"
    echo "nucdet: detectron2 source: $src"
  elif [ -n "$vendor" ]; then
    got=$(gzip -dc "$vendor" | git get-tar-commit-id 2>/dev/null || true)
    if [ "$got" != "$COMMIT" ]; then
      echo "nucdet: $vendor is not a git archive of detectron2 commit $COMMIT (it says: '${got:-no commit id}')" >&2
      exit 1
    fi
    tar xzf "$vendor" -C "$tmp"
    src="$tmp/detectron2"
    echo "nucdet: $REPO_URL cannot be reached: detectron2 source from $vendor (commit $COMMIT)"
  else
    cat >&2 <<MSG
nucdet: cannot get the detectron2 source (commit $COMMIT):
  - $REPO_URL cannot be reached from here, and
  - no detectron2-$SHORT.tar.gz in $vdir/ (\$NUCDET_VENDOR, default ../shared/vendor).
Either give network access to GitHub, or put the commit's 'git archive' there
(git -C detectron2 archive --prefix=detectron2/ -o detectron2-$SHORT.tar.gz $COMMIT),
or point to a source tree / wheel: make setup D2_SOURCE=/path/to/detectron2 (or DETECTRON2=wheel).
MSG
    exit 1
  fi
  # Build tools in the venv (no build isolation: the build must see this torch).
  pip_q install -q --progress-bar off -c "$CONSTRAINTS" setuptools wheel ninja
  jobs=$(nproc 2>/dev/null || echo 2)
  echo "nucdet: compiling detectron2 $SHORT against torch $TORCH ($PYTAG, $jobs jobs; about 2-3 minutes on 2 cores)"
  start=$(date +%s)
  mkdir -p "$CACHE"
  log="$CACHE/$KEY.build.log"
  if ! MAX_JOBS=$jobs D2_VERSION_SUFFIX="+git$SHORT.torch$TORCH" \
      "$PY" -m pip --disable-pip-version-check wheel --no-build-isolation --no-deps \
      --progress-bar off -w "$tmp/wheel" "$src" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "nucdet: building detectron2 failed; the whole log is $log" >&2
    exit 1
  fi
  built=$(ls "$tmp"/wheel/detectron2-*.whl)
  # Publish the cache entry atomically: a killed build never leaves a half wheel there.
  stage=$(mktemp -d "$CACHE/.$KEY.XXXXXX")
  cp "$built" "$stage/"
  rm -rf "$CACHE/$KEY"
  mv "$stage" "$CACHE/$KEY"
  cached=$(ls "$CACHE/$KEY"/detectron2-*.whl)
  echo "nucdet: built $cached in $(( $(date +%s) - start )) s (log: $log)"
fi
pip_q install -q --progress-bar off -c "$CONSTRAINTS" "$cached"
