"""A test's missing tool skips it on a developer's machine and fails it in CI."""

from __future__ import annotations

import pytest

from tests.fixtures.must_run import unavailable


def test_a_missing_tool_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="promtool not installed"):
        unavailable("promtool not installed")


def test_a_missing_tool_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"must run in CI.*promtool not installed"):
        unavailable("promtool not installed")
