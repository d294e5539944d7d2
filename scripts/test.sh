#!/usr/bin/env bash
# One command for the whole test suite: install dev dependencies into ./.venv, check the shape of the
# code (ruff, the import-linter layer contract, mypy --strict), then run pytest.
# Tests start their own throwaway redis-server (pytest-redis) and create a throwaway database on the
# PostgreSQL at $SENTINEL_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test).
# Under CI=true a missing Redis, PostgreSQL or browser fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "redis-server not found: installing it from Debian's packages" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) || true
fi
# Browser tests (tests/browser) drive Debian's chromium through Playwright (the Python package comes
# with the dev extra); Playwright's own browser download is not used.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "chromium not found: installing it from Debian's packages" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || true
fi
bash scripts/bootstrap.sh dev
echo "== ruff" >&2
.venv/bin/ruff check sentinel tests bench
echo "== import-linter (layers)" >&2
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache
echo "== mypy --strict" >&2
.venv/bin/mypy
echo "== pytest" >&2
exec .venv/bin/python -m pytest "$@"
