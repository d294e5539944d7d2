"""A deterministic mock upstream speaking OpenAI's and Anthropic's real wire formats.

Used by the test-suite, by ``sentinel serve`` as the embedded demo upstream and by the benchmark.
Output rules live in `sentinel.mock.text`, fault knobs in `sentinel.mock.faults`.
"""

from sentinel.mock.app import create_mock_app
from sentinel.mock.faults import Faults
from sentinel.mock.recorder import RequestLog
from sentinel.mock.server import run_mock, running_mock, serve_mock, start_mock_in_thread

__all__ = [
    "Faults",
    "RequestLog",
    "create_mock_app",
    "run_mock",
    "running_mock",
    "serve_mock",
    "start_mock_in_thread",
]
