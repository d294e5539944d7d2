#!/usr/bin/env bash
# One command for a newcomer: install into ./.venv and run `sentinel serve` on the embedded default
# (in-memory store, SQLite under ./data, built-in mock upstream when no provider is configured).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/sentinel serve "$@"
