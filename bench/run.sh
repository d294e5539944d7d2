#!/usr/bin/env bash
# Side-by-side benchmark in one run (all options go to bench.py; --help lists them):
#   bash bench/run.sh                                   # one-core and workers groups, chat/stream/native/TTFB
#   bash bench/run.sh --duration 5 --groups one-core    # quicker, one group
#   bash bench/run.sh --soak 600 --ledger --profile     # + memory soak, ledger on PostgreSQL, py-spy
# Python: $PYTHON, else the repo's .venv. Sentinel runs from this checkout (python -m sentinel).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
py="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$py" ] || { echo "run.sh: $py not found (create the repo's .venv, or set PYTHON)" >&2; exit 1; }
if ! command -v wrk >/dev/null 2>&1; then
  echo "run.sh: installing wrk with apt-get" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk >/dev/null
fi
command -v taskset >/dev/null 2>&1 || echo "run.sh: taskset missing (util-linux): running unpinned" >&2
command -v redis-server >/dev/null 2>&1 || echo "run.sh: redis-server missing: the Redis targets are skipped" >&2
exec "$py" "$here/bench.py" "$@"
