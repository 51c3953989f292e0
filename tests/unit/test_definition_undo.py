"""A step the saga may have to undo states its compensation, and the compensation goes to the
service that did the action: the two mistakes that leave a hotel booked after a declined card
are refused where they are made, with the fix in the message."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator.definition import Saga, StepContext
from orchestrator.errors import DefinitionError


class Trip(BaseModel):
    trip_id: str


def trip() -> Saga:
    return Saga("trip", version=1, input=Trip)


def test_a_forgotten_compensation_before_the_pivot_is_refused_with_the_fix() -> None:
    s = trip()
    s.remote("book_flight", command="flights.book", compensation="flights.cancel")
    with pytest.raises(DefinitionError) as refused:
        s.remote("book_hotel", command="hotels.book")
    message = str(refused.value)
    assert "saga 'trip' v1, step 'book_hotel'" in message
    assert "before the pivot" in message and "no compensation" in message
    assert "compensation=None" in message  # the way to say there is nothing to undo
    assert [step.name for step in s.steps] == ["book_flight"]


def test_nothing_to_undo_is_said_with_compensation_none() -> None:
    s = trip()
    s.remote("quote", command="pricing.quote", compensation=None)
    s.remote("charge", command="cards.charge", pivot=True)
    assert s.step("quote").compensation is None


def test_in_a_saga_without_a_pivot_every_step_may_be_undone_so_each_says_how() -> None:
    s = trip()
    s.remote("book_flight", command="flights.book", compensation="flights.cancel")
    with pytest.raises(DefinitionError, match=r"step .itinerary.*before the pivot"):
        s.remote("itinerary", command="mail.itinerary")


def test_steps_after_the_pivot_need_no_compensation() -> None:
    s = trip()
    s.remote("book_flight", command="flights.book", compensation="flights.cancel")
    s.remote("charge", command="cards.charge", pivot=True)
    s.remote("itinerary", command="mail.itinerary")  # retriable: never undone
    assert s.step("itinerary").compensation is None


def test_a_compensation_on_another_service_is_refused_unless_asked_for() -> None:
    s = trip()
    with pytest.raises(DefinitionError) as refused:
        s.remote("book_flight", command="flights.book", compensation="hotels.cancel")
    message = str(refused.value)
    assert "'hotels.cancel' goes to service 'hotels'" in message
    assert "'flights.book' to 'flights'" in message
    assert "null compensation" in message and "cross_service_compensation=True" in message
    s.remote(
        "book_flight",
        command="flights.book",
        compensation="travel_desk.cancel_flight",
        cross_service_compensation=True,
    )
    assert s.step("book_flight").compensation == "travel_desk.cancel_flight"


def test_map_and_local_steps_follow_the_same_rule() -> None:
    s = trip()
    with pytest.raises(DefinitionError, match=r"step .seats.*no compensation"):
        s.map("seats", command="flights.seat", items=lambda ctx: [1, 2])
    s.map("seats", command="flights.seat", items=lambda ctx: [1, 2], compensation=None)

    async def note(ctx: StepContext) -> dict[str, Any]:
        return {}

    with pytest.raises(DefinitionError, match=r"step .note.*compensate=None"):
        s.local()(note)
    s.local(compensate=None)(note)
    assert s.step("note").compensation is None


def test_a_local_compensation_is_the_steps_own_command() -> None:
    s = trip()

    async def hold(ctx: StepContext) -> dict[str, Any]:
        return {}

    async def release(ctx: StepContext) -> None:
        return None

    s.local(compensate=release)(hold)
    assert s.step("hold").compensation == "local.trip.hold.compensate"
    assert s.step("hold").compensation_handler is release
