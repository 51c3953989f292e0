"""Retry policy: validated fields, exponential backoff capped at max_interval, deterministic
jitter within its bounds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.error_info import ErrorInfo
from orchestrator.retry import Retry


def seconds(d: timedelta) -> float:
    return d.total_seconds()


def test_defaults() -> None:
    r = Retry()
    assert (r.max_attempts, r.initial_interval, r.multiplier, r.max_interval, r.jitter) == (
        3,
        1.0,
        2.0,
        60.0,
        0.2,
    )


def test_without_jitter_delays_grow_by_the_multiplier_until_the_cap() -> None:
    r = Retry(initial_interval=1.5, multiplier=3, max_interval=20, jitter=0)
    assert [seconds(r.delay(n, "seed")) for n in range(1, 6)] == [1.5, 4.5, 13.5, 20, 20]


def test_the_first_wait_is_the_initial_interval() -> None:
    r = Retry(initial_interval=2, jitter=0)
    assert r.delay(0, "s") == r.delay(1, "s") == timedelta(seconds=2)


def test_multiplier_one_keeps_a_constant_wait() -> None:
    r = Retry(initial_interval=5, multiplier=1, max_interval=5, jitter=0)
    assert {seconds(r.delay(n, "s")) for n in range(1, 10)} == {5.0}


def test_exhausted_counts_every_attempt() -> None:
    r = Retry(max_attempts=3)
    assert [r.exhausted(n) for n in range(5)] == [False, False, False, True, True]


def test_jitter_is_deterministic_per_seed_and_spreads_across_seeds() -> None:
    r = Retry(initial_interval=10, max_interval=100, jitter=0.5)
    assert r.delay(1, "cmd-1") == r.delay(1, "cmd-1")
    spread = {r.delay(1, f"cmd-{i}") for i in range(50)}
    assert len(spread) == 50
    values = sorted(seconds(d) for d in spread)
    assert values[0] < 7.5 and values[-1] > 12.5  # uses much of the [5, 15) range


@settings(max_examples=300, deadline=None)
@given(
    attempts=st.integers(0, 5000),
    initial=st.floats(0.01, 100),
    multiplier=st.floats(1, 10),
    cap_factor=st.floats(1, 1000),
    jitter=st.floats(0, 1),
    seed=st.text(max_size=40),
)
def test_delay_stays_within_jitter_bounds_and_never_exceeds_max_interval(
    *, attempts: int, initial: float, multiplier: float, cap_factor: float, jitter: float, seed: str
) -> None:
    r = Retry(
        initial_interval=initial,
        multiplier=multiplier,
        max_interval=initial * cap_factor,
        jitter=jitter,
    )
    try:
        grown = initial * multiplier ** max(attempts - 1, 0)
    except OverflowError:
        grown = r.max_interval
    base = min(grown, r.max_interval)
    wait = seconds(r.delay(attempts, seed))
    slack = 1e-6 * base + 1e-6  # timedelta keeps microseconds
    assert base * (1 - jitter) - slack <= wait <= base * (1 + jitter) + slack
    assert wait <= r.max_interval + 1e-6
    assert wait == seconds(r.delay(attempts, seed))


def test_capped_waits_still_spread_below_max_interval() -> None:
    r = Retry(initial_interval=1, max_interval=10, jitter=0.5)
    waits = [seconds(r.delay(20, f"cmd-{i}")) for i in range(50)]
    assert max(waits) <= 10
    assert min(waits) < 7.5  # the cap is applied before the jitter, not instead of it


def test_long_policies_do_not_overflow() -> None:
    r = Retry(max_attempts=100_000, initial_interval=1, multiplier=2, max_interval=60)
    assert timedelta(seconds=48) <= r.delay(10_000, "s") <= timedelta(seconds=60)


def test_max_interval_below_initial_interval_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"max_interval \(2.0\) must be >= initial_interval"):
        Retry(initial_interval=5, max_interval=2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("initial_interval", 0),
        ("initial_interval", -1),
        ("multiplier", 0.5),
        ("max_interval", 0),
        ("jitter", -0.1),
        ("jitter", 1.5),
        ("initial_interval", float("inf")),
        ("max_interval", float("inf")),
        ("multiplier", float("inf")),
        ("multiplier", float("nan")),
        ("max_attempts", "many"),
    ],
)
def test_bad_fields_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        Retry(**{field: value})


def test_unknown_fields_are_refused_and_policies_are_frozen() -> None:
    with pytest.raises(ValidationError, match="max_attemps"):
        Retry(max_attemps=3)  # type: ignore[call-arg]
    r = Retry()
    with pytest.raises(ValidationError):
        r.max_attempts = 9  # type: ignore[misc]
    assert Retry(max_attempts=4) == Retry(max_attempts=4)
    assert hash(Retry(max_attempts=4)) == hash(Retry(max_attempts=4))


# -- unlimited attempts and non-retryable error types ---------------------------------------------


def test_max_attempts_none_retries_forever() -> None:
    r = Retry(max_attempts=None)
    assert not any(r.exhausted(n) for n in (0, 1, 3, 1_000, 10**9))
    assert Retry(max_attempts=1).exhausted(1)  # a bound still counts every attempt


def test_waits_of_an_unlimited_policy_stay_capped() -> None:
    r = Retry(max_attempts=None, initial_interval=1, max_interval=30, jitter=0)
    assert r.delay(1_000_000, "s") == timedelta(seconds=30)


def test_a_non_retryable_error_type_is_never_retried_whatever_the_reply_says() -> None:
    r = Retry(max_attempts=None, non_retryable=frozenset({"card_declined"}))
    assert not r.retries(ErrorInfo(type="card_declined", message="no", retryable=True))
    assert not r.retries(ErrorInfo(type="card_declined", message="no"))
    assert r.retries(ErrorInfo(type="gateway_busy", message="later", retryable=True))


def test_the_replys_own_retryable_flag_is_honoured() -> None:
    r = Retry()
    assert not r.retries(ErrorInfo(type="gateway_busy", message="", retryable=False))
    assert r.retries(ErrorInfo(type="gateway_busy", message=""))  # retryable unless told otherwise
    assert r.retries(
        ErrorInfo(type="timeout", message="", timeout="start_to_close", retryable=True)
    )


def test_non_retryable_is_dumped_sorted_for_the_fingerprint() -> None:
    a = Retry(non_retryable=frozenset({"zeta", "alpha", "mid"}))
    b = Retry(non_retryable=["mid", "zeta", "alpha", "alpha"])
    assert a == b
    assert a.model_dump(mode="json")["non_retryable"] == ["alpha", "mid", "zeta"]
    assert a.model_dump_json() == b.model_dump_json()
    assert '"non_retryable":["alpha","mid","zeta"]' in a.model_dump_json()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("non_retryable", "card_declined"),  # a string is not a set of error types
        ("non_retryable", ["card_declined", 7]),
        ("non_retryable", [None]),
        ("max_attempts", -1),
        ("max_attempts", 1.5),
    ],
)
def test_bad_values_of_the_new_fields_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        Retry(**{field: value})
