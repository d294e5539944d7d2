#!/usr/bin/env bash
# Create ./.venv (if missing) and install Sentinel into it (editable). Usage: scripts/bootstrap.sh [extras]
# Installs the tested versions (`-c constraints.txt`, see scripts/lock.sh). Re-installs only when
# pyproject.toml, constraints.txt or the extras changed since the last install (a stamp file in
# .venv records them), so a second `serve.sh` starts in about a second. Install output goes to
# .venv/install.log; it is shown only when the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
extras="${1:-}"
stamp=".venv/.sentinel-install-${extras:-base}"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
installed() {  # the base install is part of every extras install
  if [ -n "$extras" ]; then [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; return; fi
  grep -qx "$want" .venv/.sentinel-install-* 2>/dev/null
}
if [ -x .venv/bin/python ] && installed; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating ./.venv and installing Sentinel (first run only)..." >&2
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >.venv/install.log 2>&1 || { cat .venv/install.log >&2; exit 1; }
else
  echo "installing Sentinel's dependencies (pyproject.toml or constraints.txt changed)..." >&2
fi
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
if ! PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install -q -c constraints.txt -e "$spec" >>.venv/install.log 2>&1; then
  cat .venv/install.log >&2
  exit 1
fi
for old in .venv/.sentinel-install-*; do  # stamps of an older pyproject.toml no longer hold
  [ -f "$old" ] && ! grep -qx "$want" "$old" && rm -f "$old"
done
echo "$want" >"$stamp"
