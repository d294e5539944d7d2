"""schemathesis against the served OpenAPI document: no 500 from the native endpoint, ever."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.api.conftest import Gateway


def test_schemathesis_finds_no_server_errors(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    gw = gateway_factory(docs_api_key="docs-key", default_plan="requests=100000/1m")
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [
            str(st), "run", f"{gw.url}/native/docs/openapi.json",
            "--url", gw.url,
            "-H", f"Authorization: Bearer {gw.key}",
            "-H", "X-Docs-Key: docs-key",
            "--checks", "not_a_server_error",
            "--max-examples", "60",
            "--phases", "examples,coverage,fuzzing",
            "--workers", "2",
            "--no-color",
        ],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None and int(generated.group(1)) >= 20, output[-2000:]
