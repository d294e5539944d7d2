"""`sentinel.native` is the pure core: it imports nothing else of Sentinel and no I/O library."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import sentinel.native, sentinel.native.openai, sentinel.native.anthropic, sentinel.native.stream, sentinel.native.sse
ours = sorted(m for m in sys.modules if m.startswith("sentinel.") and not m.startswith("sentinel.native"))
io = sorted(m for m in ("aiohttp", "httpx", "redis", "sqlalchemy", "starlette", "openai", "anthropic") if m in sys.modules)
print(ours, io)
"""


def test_native_imports_nothing_of_ours_and_no_io_library() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"
