"""The run card's status line says what the exit code means, and only what applies."""

import pytest

from opsbook.run.runner import _status_text


@pytest.mark.parametrize(
    ("status", "code", "text"),
    [
        ("pass", 0, "PASS (exit 0)"),
        ("warn", 0, "WARN (exit 0: with warnings)"),
        ("fail", 1, "FAIL (exit 1: a check failed (or, for a backfill, some partition did))"),
        ("fail", 5, "FAIL (exit 5: timeout)"),
        ("fail", 77, "FAIL (exit 77: see the summary)"),
    ],
)
def test_status_text(status, code, text):
    assert _status_text(status, code) == text
