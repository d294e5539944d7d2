#!/usr/bin/env bash
# Rewrite constraints.txt with the newest releases the registry offers within pyproject.toml's
# ranges (resolved in a throwaway venv with the dev extras). Run scripts/test.sh before committing it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
log="$tmp/install.log"
if ! { "$tmp/venv/bin/python" -m pip install -q --upgrade pip &&
       PIP_DISABLE_PIP_VERSION_CHECK=1 "$tmp/venv/bin/python" -m pip install -q ".[dev]"; } >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
{
  echo "# The versions Sentinel's CI last passed with: scripts/bootstrap.sh installs with \`-c constraints.txt\`,"
  echo "# so a fresh machine gets the tested set, not whatever a registry released since. To move to newer"
  echo "# releases: bash scripts/lock.sh (rewrites this file), then bash scripts/test.sh before committing."
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$tmp/venv/bin/python" -m pip freeze --exclude-editable 2>/dev/null | grep -v '^sentinel-gateway[ =]'
} >constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pinned packages" >&2
