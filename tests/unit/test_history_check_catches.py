"""check_history (tests/e2e/history_check.py) fed histories the real state machine wrote
(tests/fixtures/order_runs.py): each passes as written, and each doctored one is reported.
The e2e and chaos tests trust its empty answer, so both must hold."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace

import pytest

from orchestrator.machine import command_id
from tests.e2e.history_check import Entry, check_history
from tests.fixtures.order_runs import Run, cancelled, compensated, completed, parked

Doctor = Callable[[list[Entry]], list[Entry]]


def renumbered(history: list[Entry]) -> list[Entry]:
    return [replace(e, seq=n) for n, e in enumerate(history, start=1)]


def at(history: list[Entry], event: str, step: str | None = None) -> int:
    """Index of the first `event` (of `step`) in `history`."""
    return next(n for n, e in enumerate(history) if e.event == event and step in (None, e.step))


def problems(*runs: Run) -> list[str]:
    return check_history(
        [e for r in runs for e in r.history], {r.saga_id: r.state.status.value for r in runs}
    )


def test_the_histories_the_machine_writes_pass() -> None:
    runs = [completed(), compensated(), cancelled(), parked()]
    assert [r.state.status.value for r in runs] == [
        "completed",
        "compensated",
        "cancelled",
        "failed",
    ]
    assert problems(*runs) == []


def test_what_may_follow_the_end_passes() -> None:
    run = completed()
    late = [
        Entry(run.saga_id, 0, "reply_ignored", "notify_customer", {"attempt": 1}),
        Entry(run.saga_id, 0, "cancel_refused", None, {"why": "finished"}),
        Entry(run.saga_id, 0, "start_repeated", None, None),
    ]
    assert problems(replace(run, history=renumbered(run.history + late))) == []


def drop_entry(history: list[Entry]) -> list[Entry]:
    n = at(history, "step_skipped")
    return history[:n] + history[n + 1 :]


def swap_dispatch_and_answer(history: list[Entry]) -> list[Entry]:
    sent, answered = (
        at(history, "step_dispatched", "notify_customer"),
        at(history, "step_succeeded", "notify_customer"),
    )
    doctored = list(history)
    doctored[sent] = replace(history[sent], seq=history[answered].seq)
    doctored[answered] = replace(history[answered], seq=history[sent].seq)
    return doctored


def repeat_seq(history: list[Entry]) -> list[Entry]:
    return [replace(e, seq=e.seq - 1) if n == 3 else e for n, e in enumerate(history)]


def end_twice(history: list[Entry]) -> list[Entry]:
    return renumbered([*history, history[-1]])


def end_otherwise(history: list[Entry]) -> list[Entry]:
    return [*history[:-1], replace(history[-1], event="saga_compensated")]


def lose_start(history: list[Entry]) -> list[Entry]:
    return renumbered(history[1:])


def start_twice(history: list[Entry]) -> list[Entry]:
    return renumbered([history[0], *history])


def act_after_end(history: list[Entry]) -> list[Entry]:
    saga_id = history[0].saga_id
    again = Entry(
        saga_id,
        0,
        "step_dispatched",
        "notify_customer",
        {"attempt": 2, "command_id": str(command_id(saga_id, "notify_customer", "action", 2))},
    )
    return renumbered([*history, again])


def dispatch_twice(history: list[Entry]) -> list[Entry]:
    n = at(history, "step_dispatched", "notify_customer")
    return renumbered([*history[: n + 1], history[n], *history[n + 1 :]])


def wrong_command_id(history: list[Entry]) -> list[Entry]:
    n = at(history, "step_dispatched", "charge_payment")
    detail = {**(history[n].detail or {}), "command_id": str(uuid.uuid4())}
    return [*history[:n], replace(history[n], detail=detail), *history[n + 1 :]]


def answer_twice(history: list[Entry]) -> list[Entry]:
    n = at(history, "step_succeeded", "notify_customer")
    return renumbered([*history[: n + 1], history[n], *history[n + 1 :]])


def answer_undispatched(history: list[Entry]) -> list[Entry]:
    n = at(history, "step_succeeded", "charge_payment")
    detail = {**(history[n].detail or {}), "attempt": 3}
    return [*history[:n], replace(history[n], detail=detail), *history[n + 1 :]]


def time_out_twice(history: list[Entry]) -> list[Entry]:
    n = at(history, "step_timed_out", "charge_payment")
    return renumbered([*history[: n + 1], history[n], *history[n + 1 :]])


@pytest.mark.parametrize(
    ("doctor", "reported"),
    [
        (drop_entry, "history seq is not 1..13"),
        (swap_dispatch_and_answer, "step_succeeded notify_customer attempt 1 was never dispatched"),
        (repeat_seq, "history seq is not 1..14"),
        (end_twice, "status completed but terminal entries ['saga_completed', 'saga_completed']"),
        (end_otherwise, "status completed but terminal entries ['saga_compensated']"),
        (lose_start, "saga_started recorded 0 times"),
        (start_twice, "saga_started recorded 2 times"),
        (act_after_end, "step_dispatched notify_customer at seq 15 after the saga ended"),
        (dispatch_twice, "step_dispatched notify_customer attempt 1 again at seq 13"),
        (wrong_command_id, "step_dispatched charge_payment attempt 1: wrong command id"),
        (answer_twice, "step_succeeded notify_customer attempt 1 recorded 2 times"),
        (answer_undispatched, "step_succeeded charge_payment attempt 3 was never dispatched"),
        (time_out_twice, "step_timed_out charge_payment attempt 1 recorded 2 times"),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_a_doctored_history_is_reported(doctor: Doctor, reported: str) -> None:
    run, other = completed(), compensated()
    found = problems(replace(run, history=doctor(run.history)), other)
    assert found, "a doctored history passed"
    assert any(p.startswith(f"{run.saga_id}: {reported}") for p in found), found
    assert not any(str(other.saga_id) in p for p in found), "the clean saga was blamed"


def test_a_history_without_its_saga_and_a_saga_without_history_are_reported() -> None:
    run, ghost = completed(), compensated()
    found = check_history(run.history + ghost.history, {run.saga_id: "completed"})
    assert found == [f"{ghost.saga_id}: history of a saga that does not exist"]
    found = check_history([], {run.saga_id: "completed"})
    assert f"{run.saga_id}: saga_started recorded 0 times" in found
    assert f"{run.saga_id}: status completed but terminal entries []" in found


def test_one_command_dispatched_by_two_sagas_is_reported() -> None:
    run, other = completed(), compensated()
    stolen = run.history[at(run.history, "step_dispatched", "charge_payment")]
    doctored = renumbered(
        [*other.history[:-1], replace(stolen, saga_id=other.saga_id), other.history[-1]]
    )
    found = problems(run, replace(other, history=doctored))
    assert f"command {stolen.detail and stolen.detail['command_id']} dispatched 2 times" in found
