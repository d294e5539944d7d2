"""What compiling Sentinel's hot modules with mypyc buys: an interleaved A/B against this checkout.

Makes a throwaway git worktree of HEAD (committed code only), compiles `MODULES` there with mypyc
(mypy's compiler, installed with the dev extras; needs gcc and the Python headers), then runs that
worktree's `interleave.py` with `--before` this checkout: "after" is the compiled copy, "before"
the same code interpreted. Embedded default first, then on Redis. The A/B stops at the first
non-200 answer, so a compiled copy that breaks at run time cannot report a speed. The worktree is
removed afterwards; nothing is installed. About 10 minutes on 2 cores.

    python bench/mypyc_trial.py            # both stores
    python bench/mypyc_trial.py --embedded-only

The result of 2026-12-03 is in the README (What next). Sentinel is not shipped compiled.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from procs import REPO, log

# The modules with the most self time in `bench/run.sh --profile` that mypyc 2.4 compiles into a
# working server. Left out: providers/http.py and services/answers.py (async generators are not
# implemented in mypyc), db/sqlite_writer.py (an attribute `_inline` becomes C's `__inline`: the C
# compile fails), domain/catalogue.py (a pydantic import the C code misses), governance/cache.py (a
# generic slotted dataclass fails at import), governance/keys.py (a SQLAlchemy Row where the
# annotation says tuple: a run-time type error), observability/logging.py (`exc_info` typed as a
# tuple, sometimes a bool). quota/local_limiter.py is here because an interpreted class cannot
# subclass a compiled one (QuotaLimiter).
MODULES = [
    "sentinel/api/deps.py",
    "sentinel/api/dispatch.py",
    "sentinel/api/middleware.py",
    "sentinel/api/openai.py",
    "sentinel/api/responses.py",
    "sentinel/governance/auth.py",
    "sentinel/governance/ledger.py",
    "sentinel/native/openai_checks.py",
    "sentinel/providers/openai.py",
    "sentinel/quota/decision.py",
    "sentinel/quota/estimate.py",
    "sentinel/quota/limiter.py",
    "sentinel/quota/local_limiter.py",
    "sentinel/quota/meter.py",
    "sentinel/quota/tokens.py",
    "sentinel/quota/usage.py",
    "sentinel/routing/model_routes.py",
    "sentinel/services/objects.py",
    "sentinel/services/relay.py",
    "sentinel/store/memory.py",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedded-only", action="store_true", help="skip the Redis A/B")
    a = parser.parse_args()
    mypyc = Path(sys.executable).with_name("mypyc")
    if not mypyc.exists():
        raise SystemExit(f"{mypyc} not found: install the dev extras (bash scripts/bootstrap.sh dev)")
    with tempfile.TemporaryDirectory(prefix="sentinel-mypyc-") as tmp:
        tree = Path(tmp) / "compiled"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), "HEAD"], check=True)
        try:
            log(f"compiling {len(MODULES)} modules with mypyc in {tree}")
            subprocess.run([str(mypyc), *MODULES], cwd=tree, check=True, stdout=subprocess.DEVNULL)
            built = sorted(p.relative_to(tree) for p in (tree / "sentinel").rglob("*.so"))
            if len(built) != len(MODULES):
                raise SystemExit(f"mypyc built {len(built)} extension modules, expected {len(MODULES)}")
            for redis in [False] if a.embedded_only else [False, True]:
                subprocess.run(
                    [sys.executable, str(tree / "bench" / "interleave.py"), "--before", str(REPO),
                     *(["--redis"] if redis else [])],
                    check=True,
                )  # fmt: skip
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
