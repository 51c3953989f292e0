"""Settings that contradict each other are refused when the process starts, saying why."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from adapters.settings import Settings


def test_a_relay_age_not_above_the_relay_interval_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"SAGA_RELAY_AGE \(1.0\) must be greater than"):
        Settings(relay_age=1.0, relay_interval=1.0)
    assert Settings(relay_age=0.5, relay_interval=0.2).relay_age == 0.5


def test_the_relay_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_RELAY_INTERVAL", "3")
    with pytest.raises(ValidationError, match="SAGA_RELAY_INTERVAL"):
        Settings()  # the default age, 2 s, is now shorter than the interval
