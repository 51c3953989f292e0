"""The step and saga options of the time-and-failure features (schedule_to_start, guards,
sleeps, deadlines, non-retryable errors): refused when malformed, and in the fingerprint only
when used, so definitions registered before these options existed keep their fingerprint."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from orchestrator.definition import GuardContext, Saga
from orchestrator.errors import DefinitionError
from orchestrator.registry import Registry
from orchestrator.retry import Retry
from sagas.order import order_v1 as order_saga  # sequential: these tests follow it step by step
from tests.unit.builders import Input, shop


def always(_ctx: GuardContext) -> bool:
    return True


def never(_ctx: GuardContext) -> bool:
    return False


def new_year(_ctx: GuardContext) -> datetime:
    return datetime(2027, 1, 1, tzinfo=UTC)


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), True, "5"])
def test_bad_schedule_to_start_is_refused(bad: Any) -> None:
    with pytest.raises(DefinitionError, match="schedule_to_start must be a positive number"):
        shop().remote("reserve", command="stock.reserve", schedule_to_start=bad, compensation=None)


@pytest.mark.parametrize("option", ["deadline", "compensation_deadline"])
@pytest.mark.parametrize("bad", [0, -5, float("inf"), False])
def test_bad_saga_deadlines_are_refused(option: str, bad: Any) -> None:
    with pytest.raises(DefinitionError, match=f"{option} must be a positive number"):
        Saga("shop", input=Input, **{option: bad})


def test_a_guard_must_be_callable() -> None:
    with pytest.raises(DefinitionError, match="guard= must be a function"):
        shop().remote("reserve", command="stock.reserve", guard=True, compensation=None)  # type: ignore[arg-type]


def test_on_guard_false_must_be_skip_or_fail() -> None:
    with pytest.raises(DefinitionError, match="on_guard_false must be 'skip' or 'fail'"):
        shop().remote(
            "reserve",
            command="stock.reserve",
            guard=always,
            on_guard_false="ignore",  # type: ignore[arg-type]
            compensation=None,
        )


@pytest.mark.parametrize(
    "options",
    [{}, {"seconds": 5, "until": new_year}],
    ids=["neither", "both"],
)
def test_a_sleep_needs_exactly_one_of_seconds_or_until(options: dict[str, Any]) -> None:
    s = shop()
    with pytest.raises(DefinitionError, match="step 'nap': give exactly one of seconds= or until="):
        s.sleep("nap", **options)
    assert s.steps == ()


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_a_sleep_of_no_time_is_refused(bad: float) -> None:
    with pytest.raises(DefinitionError, match="seconds must be a positive number"):
        shop().sleep("nap", seconds=bad)


def test_sleep_until_must_be_callable() -> None:
    moment = datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(DefinitionError, match="until= must be a function"):
        shop().sleep("nap", until=moment)  # type: ignore[arg-type]


def test_a_sleep_sends_nothing_and_follows_the_step_rules() -> None:
    s = shop()
    s.sleep("nap", seconds=60)
    spec = s.step("nap")
    assert spec.sleep and spec.command is None and spec.compensation is None and not spec.pivot
    with pytest.raises(DefinitionError, match="exists already"):
        s.sleep("nap", seconds=5)
    s.remote("charge", command="payments.charge", pivot=True)
    s.sleep("cool_down", until=new_year)  # after the pivot: fine, it is never compensated
    assert Registry([s]).commands() == {"payments.charge"}  # no queue for a sleep


# -- fingerprint ----------------------------------------------------------------------------------


def plain() -> Saga:
    s = shop()
    s.remote("reserve", command="stock.reserve", compensation="stock.release")
    s.remote("charge", command="payments.charge", pivot=True)
    return s


def test_a_step_without_the_new_options_documents_exactly_the_old_fields() -> None:
    doc = plain().steps[0].document()
    assert set(doc) == {
        "name",
        "command",
        "compensation",
        "pivot",
        "local",
        "timeout",
        "retry",
        "compensation_timeout",
        "compensation_retry",
    }
    old_policy = {"max_attempts", "initial_interval", "multiplier", "max_interval", "jitter"}
    assert set(doc["retry"]) == set(doc["compensation_retry"]) == old_policy
    assert "deadline" not in plain().document()
    assert "compensation_deadline" not in plain().document()


def test_the_order_saga_keeps_the_fingerprint_it_was_registered_with() -> None:
    # Computed by the release before deadlines, guards, sleeps and non_retryable existed. A
    # change here stops every orchestrator whose database registered order v1 (bump the
    # version if the steps really changed).
    assert order_saga.fingerprint == (
        "89e41ce5eefbe66b6a42d26d5b90c6c0f2c53830f706a7d735ff4468f6e97291"
    )


def with_reserve(**options: Any) -> Saga:
    s = shop()
    s.remote("reserve", command="stock.reserve", compensation="stock.release", **options)
    return s


@pytest.mark.parametrize(
    "options",
    [
        {"schedule_to_start": 5},
        {"guard": always},
        {"guard": always, "on_guard_false": "fail"},
        {"retry": Retry(non_retryable=frozenset({"out_of_stock"}))},
        {"compensation_retry": Retry(max_attempts=None)},
    ],
)
def test_each_new_step_option_changes_the_fingerprint(options: dict[str, Any]) -> None:
    assert with_reserve(**options).fingerprint != with_reserve().fingerprint


def test_the_guard_is_named_in_the_fingerprint() -> None:
    assert with_reserve(guard=always).fingerprint != with_reserve(guard=never).fingerprint
    assert with_reserve(guard=always).fingerprint == with_reserve(guard=always).fingerprint
    doc = with_reserve(guard=always, on_guard_false="fail").steps[0].document()
    assert doc["guard"].endswith("test_definition_options.always")
    assert doc["on_guard_false"] == "fail"


def test_sleeps_and_deadlines_are_in_the_fingerprint() -> None:
    def sleeping(**options: Any) -> Saga:
        s = shop()
        s.sleep("nap", **options)
        return s

    assert sleeping(seconds=5).fingerprint != sleeping(seconds=6).fingerprint
    assert sleeping(seconds=5).fingerprint != sleeping(until=new_year).fingerprint
    assert sleeping(until=new_year).steps[0].document()["sleep_until"].endswith("new_year")

    def deadlines(**options: Any) -> Saga:
        s = Saga("shop", input=Input, **options)
        s.remote("reserve", command="stock.reserve", compensation=None)
        return s

    fingerprints = {
        deadlines().fingerprint,
        deadlines(deadline=60).fingerprint,
        deadlines(deadline=61).fingerprint,
        deadlines(compensation_deadline=60).fingerprint,
    }
    assert len(fingerprints) == 4


def test_non_retryable_types_in_any_order_give_one_fingerprint() -> None:
    a = with_reserve(retry=Retry(non_retryable=frozenset({"b", "a", "c"})))
    b = with_reserve(retry=Retry(non_retryable=["c", "a", "b"]))
    assert a.fingerprint == b.fingerprint
    assert a.steps[0].document()["retry"]["non_retryable"] == ["a", "b", "c"]
