"""The public test kit, `orchestrator.testing`: scripts, virtual time, local steps, cancels,
operators and the errors it gives when a test asks for what did not happen."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator import Retry, Saga
from orchestrator.definition import StepContext
from orchestrator.testing import (
    START,
    SagaTest,
    SagaTestError,
    answer_after,
    fail,
    heartbeat,
    no_answer,
    succeed,
)
from sagas.order import saga as order

ORDER = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "amount": "25.00",
    "items": [{"sku": "book", "qty": 1}],
}


class In(BaseModel):
    n: int = 1


def shop(**options: Any) -> Saga:
    """reserve (compensatable, 2 attempts 1 s apart) -> charge (the pivot) -> ship."""
    s = Saga("shop", version=1, input=In, **options)
    retry = Retry(max_attempts=2, initial_interval=1, jitter=0)
    s.remote("reserve", command="stock.reserve", compensation="stock.release", retry=retry)
    s.remote("charge", command="payments.charge", pivot=True, retry=Retry(max_attempts=1))
    s.remote("ship", command="shipping.ship", retry=Retry(max_attempts=1))
    return s


def test_the_order_sagas_declined_card_undoes_both_reservations() -> None:
    t = SagaTest(order, input=ORDER)
    t.script("customers.reserve_credit", succeed({"reservation_id": 1}))
    t.script("inventory.reserve", succeed({"reservation_id": 2}))
    t.script("payments.charge", fail("card_declined", retryable=False))
    t.run()
    assert t.status == "compensated"
    assert t.sent() == [
        "customers.reserve_credit",
        "inventory.reserve",
        "payments.charge",
        "inventory.release",
        "customers.release_credit",
    ]
    assert t.command("inventory.release").action_result == {"reservation_id": 2}
    assert t.command("customers.release_credit").action_result == {"reservation_id": 1}
    assert t.sent(kind="compensation") == ["inventory.release", "customers.release_credit"]
    assert t.outcomes[-1].status == "compensated"
    assert t.error is not None and t.error["step"] == "charge_payment"


def test_a_completed_saga_has_its_output_and_results() -> None:
    t = SagaTest(order, input=ORDER)
    t.script("customers.reserve_credit", succeed({"reservation_id": 1}))
    t.script("inventory.reserve", succeed({"reservation_id": 2}))
    t.script("payments.charge", succeed({"charge_id": 9, "charged": "25.00"}))
    t.run()
    assert t.status == "completed"
    assert t.output == {"order_id": "o-1", "charge_id": 9, "charged": "25.00"}
    assert t.results["charge_payment"] == {"charge_id": 9, "charged": "25.00"}
    notify = t.command("notifications.order_confirmed")
    assert notify.payload["charge_id"] == 9
    assert notify.idempotency_key == f"{t.state.saga_id}:notify_customer:action"


def test_unscripted_commands_succeed_with_no_result() -> None:
    t = SagaTest(shop(), input={}).run()
    assert t.status == "completed"
    assert t.sent() == ["stock.reserve", "payments.charge", "shipping.ship"]
    assert t.now == START


def test_a_sequence_answers_attempt_after_attempt_and_retry_waits_take_virtual_time() -> None:
    t = SagaTest(shop(), input={})
    t.script("stock.reserve", fail("busy"), succeed({"id": 1}))
    t.run()
    assert t.status == "completed"
    assert [c.attempt for c in t.commands if c.step == "reserve"] == [1, 2]
    assert t.command("reserve", attempt=1).idempotency_key == t.command("reserve").idempotency_key
    assert t.step("reserve").result == {"id": 1}
    assert t.now == START + timedelta(seconds=1)  # the retry's wait, and nothing else


def test_the_last_answer_of_a_script_repeats() -> None:
    t = SagaTest(shop(), input={}).script("stock.reserve", fail("busy")).run()
    assert t.status == "compensated"
    assert [c.attempt for c in t.commands if c.kind == "action"] == [1, 2]


def test_never_answering_lets_an_hour_long_timeout_fire_in_no_time() -> None:
    s = Saga("slow", version=1, input=In)
    s.remote(
        "wait", command="slow.work", compensation=None, timeout=3600, retry=Retry(max_attempts=1)
    )
    t = SagaTest(s, input={}).script("slow.work", no_answer()).run()
    assert t.status == "compensated"
    assert t.entry("step_timed_out", "wait")
    assert t.now == START + timedelta(hours=1)


def test_a_late_answer_arrives_after_its_delay_or_not_at_all_past_the_timeout() -> None:
    s = Saga("slow", version=1, input=In)
    s.remote(
        "wait", command="slow.work", compensation=None, timeout=60, retry=Retry(max_attempts=1)
    )
    on_time = SagaTest(s, input={}).script("slow.work", answer_after(59, succeed({"ok": 1}))).run()
    assert on_time.status == "completed"
    assert on_time.now == START + timedelta(seconds=59)
    late = SagaTest(s, input={}).script("slow.work", answer_after(61, succeed({"ok": 1}))).run()
    assert late.status == "compensated"
    assert late.entry("step_timed_out", "wait")


def test_heartbeats_keep_a_long_step_alive_and_their_silence_times_it_out() -> None:
    s = Saga("long", version=1, input=In)
    s.remote(
        "crunch",
        command="batch.crunch",
        compensation=None,
        timeout=3600,
        heartbeat_timeout=30,
        retry=Retry(max_attempts=1),
    )
    beating = heartbeat(*range(0, 100, 20), details={"done": 80}, then=answer_after(100, succeed()))
    alive = SagaTest(s, input={}).script("batch.crunch", beating).run()
    assert alive.status == "completed"
    assert alive.now == START + timedelta(seconds=100)
    silent = SagaTest(s, input={}).script("batch.crunch", heartbeat(0, 20)).run()
    assert silent.status == "compensated"
    assert silent.now == START + timedelta(seconds=50)  # 30 s after the last heartbeat


def test_advance_moves_the_clock_and_fires_only_what_is_due_by_then() -> None:
    s = Saga("nap", version=1, input=In)
    s.sleep("nap", seconds=3600)
    s.remote("wake", command="alarm.ring", compensation=None)
    t = SagaTest(s, input={})
    t.advance(3599)
    assert t.status == "running" and t.sent() == []
    t.advance(1)
    assert t.sent() == ["alarm.ring"]
    t.run()
    assert t.status == "completed" and t.now == START + timedelta(hours=1)


def test_local_steps_run_their_functions_and_compensations() -> None:
    seen: list[tuple[str, Any]] = []
    s = Saga("local", version=1, input=In)

    async def undo_book(ctx: StepContext) -> None:
        seen.append(("undo", ctx.action_result))

    @s.local("book", compensate=undo_book, result=In)
    async def book(ctx: StepContext) -> dict[str, Any]:
        seen.append((ctx.kind, ctx.input.model_dump()))
        return {"n": 41}

    s.remote("pay", command="payments.charge", pivot=True, retry=Retry(max_attempts=1))
    t = SagaTest(s, input={"n": 5}).script("payments.charge", fail("declined", retryable=False))
    t.run()
    assert t.status == "compensated"
    assert seen == [("action", {"n": 5}), ("undo", {"n": 41})]
    assert t.sent() == ["local.local.book", "payments.charge", "local.local.book.compensate"]


async def test_local_steps_run_inside_an_async_test_too() -> None:
    s = Saga("local", version=1, input=In)

    @s.local("count", compensate=None)
    async def count(ctx: StepContext) -> dict[str, int]:
        return {"n": ctx.payload["n"] + 1}

    t = SagaTest(s, input={"n": 1}).run()
    assert t.results == {"count": {"n": 2}}


def test_a_local_step_that_raises_fails_with_the_errors_type_and_retryable() -> None:
    class Refused(Exception):
        type = "refused"
        retryable = False

    s = Saga("local", version=1, input=In)

    @s.local("check", compensate=None, retry=Retry(max_attempts=3))
    async def check(ctx: StepContext) -> None:
        raise Refused("no")

    t = SagaTest(s, input={}).run()
    assert t.status == "compensated"
    assert t.step("check").error == {"type": "refused", "message": "no", "retryable": False}
    assert [c.attempt for c in t.commands] == [1]


def test_a_script_overrides_a_local_steps_function() -> None:
    s = Saga("local", version=1, input=In)

    @s.local("count", compensate=None)
    async def count(ctx: StepContext) -> dict[str, int]:
        raise AssertionError("the script answers instead")

    t = SagaTest(s, input={}).script("count", succeed({"n": 7})).run()
    assert t.results == {"count": {"n": 7}}


def test_a_cancel_undoes_what_was_done_and_one_past_the_pivot_is_refused() -> None:
    t = SagaTest(shop(), input={}).script("stock.reserve", answer_after(5, succeed()))
    t.advance(1)
    assert t.step("reserve").status == "running"
    t.cancel("customer changed their mind")
    t.run()
    assert t.status == "cancelled"
    assert t.sent() == ["stock.reserve", "stock.release"]
    late = SagaTest(shop(), input={}).script("payments.charge", no_answer())
    late.advance(1)
    late.cancel("too late")
    assert late.entry("cancel_refused").detail is not None


def test_pause_holds_the_timers_and_resume_lets_them_fire() -> None:
    t = SagaTest(shop(), input={}).script("stock.reserve", no_answer())
    t.pause()
    t.run()
    assert t.status == "paused" and t.now == START
    t.resume()
    t.run()
    assert t.entry("step_timed_out", "reserve")


def test_an_operator_retries_a_parked_step_after_the_pivot() -> None:
    t = SagaTest(shop(), input={}).script("shipping.ship", fail("down"), succeed())
    t.run()
    assert t.status == "failed"
    assert t.retry().refused is None
    t.run()
    assert t.status == "completed"
    assert [c.attempt for c in t.commands if c.step == "ship"] == [1, 2]


def test_scripts_by_step_name_and_kind() -> None:
    t = SagaTest(shop(), input={})
    t.script("reserve", succeed({"id": 3}), kind="action")
    t.script("reserve", fail("stuck", retryable=False), kind="compensation")
    t.script("charge", fail("declined", retryable=False))
    t.run()
    assert t.status == "failed"  # the compensation failed for good: parked
    assert t.step("reserve").result == {"id": 3}


def test_replying_by_hand_with_auto_off() -> None:
    t = SagaTest(shop(), input={}, auto=False)
    assert t.sent() == ["stock.reserve"] and t.status == "running"
    t.reply("stock.reserve", succeed({"id": 1}))
    assert t.sent()[-1] == "payments.charge"


def test_asking_for_a_command_never_sent_names_what_was_sent() -> None:
    t = SagaTest(shop(), input={}).run()
    with pytest.raises(SagaTestError, match=r"no command stock.release was sent; sent: .*stock"):
        t.command("stock.release")
    with pytest.raises(SagaTestError, match=r"no 'step_timed_out' in the history"):
        t.entry("step_timed_out")
    with pytest.raises(SagaTestError, match="has no step 'nope'"):
        t.step("nope")


def test_scripting_a_name_the_saga_does_not_use_is_an_error() -> None:
    with pytest.raises(SagaTestError, match=r"sends no such command.*payments.charge"):
        SagaTest(shop(), input={}).script("payment.charge", succeed())


def test_strict_refuses_unscripted_commands() -> None:
    t = SagaTest(shop(), input={}, strict=True).script("stock.reserve", succeed())
    with pytest.raises(SagaTestError, match=r"no script for action 'payments.charge'"):
        t.run()


def test_invalid_input_is_refused_as_the_engine_would() -> None:
    with pytest.raises(SagaTestError, match="input for saga 'shop' is invalid"):
        SagaTest(shop(), input={"n": "many"})


def test_a_saga_that_never_rests_is_reported() -> None:
    s = Saga("stubborn", version=1, input=In)
    s.remote("ship", command="shipping.ship", compensation=None, retry=Retry(max_attempts=100_000))
    t = SagaTest(s, input={}).script("shipping.ship", fail("down"))
    with pytest.raises(SagaTestError, match="did not rest after 100 events"):
        t.run(max_events=100)


def test_child_sagas_are_answered_by_their_name() -> None:
    s = Saga("parent", version=1, input=In)
    s.child("kid", saga="child", compensate=False)
    t = SagaTest(s, input={}).script("child", succeed({"born": True})).run()
    assert t.status == "completed"
    assert t.results == {"kid": {"born": True}}
    assert [kind for kind, _ in t.requests] == ["start"]


def test_a_map_steps_items_share_its_script_in_dispatch_order() -> None:
    s = Saga("fan", version=1, input=In)
    s.map(
        "chunks",
        command="batch.chunk",
        items=lambda ctx: [10, 20, 30],
        compensation=None,
        concurrency=1,
        retry=Retry(max_attempts=1),
    )
    t = SagaTest(s, input={})
    t.script("chunks", succeed({"i": 0}), succeed({"i": 1}), succeed({"i": 2}))
    t.run()
    assert t.status == "completed"
    assert [c.item for c in t.commands] == [10, 20, 30]
    assert t.results == {"chunks": [{"i": 0}, {"i": 1}, {"i": 2}]}
