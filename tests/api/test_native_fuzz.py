"""schemathesis against the served OpenAPI document: no 5xx from the native endpoint, ever, and every
answer conforms to the document (a documented status code, a documented content type, a body that
validates against the documented schema, the documented headers)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.api.conftest import Gateway

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)


def test_schemathesis_finds_no_server_errors(gateway_factory: Callable[..., Gateway], tmp_path: Path) -> None:
    gw = gateway_factory(docs_api_key="docs-key-for-tests-0123", default_plan="requests=100000/1m")
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [
            str(st), "run", f"{gw.url}/native/docs/openapi.json",
            "--url", gw.url,
            "-H", f"Authorization: Bearer {gw.key}",
            "-H", "X-Docs-Key: docs-key-for-tests-0123",
            "--checks", ",".join(CHECKS),
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
