#!/usr/bin/env bash
# Side-by-side benchmark: direct to the mock vs bare relay vs Sentinel. All options go to bench.py:
#   bash bench/run.sh --duration 5 [--scenarios chat,stream,native,ttfb] [--concurrency 1,16,64]
#                     [--redis redis://127.0.0.1:6379/0] [--soak 300] [--profile] [--json out.json]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
py="$repo/.venv/bin/python"
[ -x "$py" ] || { echo "run.sh: $py not found (create the repo's .venv first)" >&2; exit 1; }
if ! command -v wrk >/dev/null 2>&1; then
  echo "run.sh: installing wrk with apt-get" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk >/dev/null
fi
command -v taskset >/dev/null 2>&1 || echo "run.sh: taskset missing (util-linux): running unpinned" >&2
exec "$py" "$here/bench.py" "$@"
