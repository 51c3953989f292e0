"""A refused registration says what changed between the registered definition and the one
loaded now, in words an author recognises as their own edit."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from orchestrator.definition import GuardContext, Saga
from orchestrator.definition_diff import changes


class Trip(BaseModel):
    trip_id: str


class TripWithDate(BaseModel):
    trip_id: str
    date: str


def trip(*, deadline: float | None = None, input: type[BaseModel] = Trip) -> Saga:
    return Saga("trip", version=1, input=input, deadline=deadline)


def test_an_unchanged_definition_has_no_changes() -> None:
    s = trip()
    s.remote("book_flight", command="flights.book", compensation="flights.cancel")
    assert changes(s.document(), s.document()) == []


def test_added_removed_and_reordered_steps_are_named() -> None:
    old = trip()
    old.remote("book_flight", command="flights.book", compensation="flights.cancel")
    old.remote("book_hotel", command="hotels.book", compensation="hotels.cancel")
    old.remote("rent_car", command="cars.rent", compensation="cars.return")
    new = trip()
    new.remote("book_hotel", command="hotels.book", compensation="hotels.cancel")
    new.remote("book_flight", command="flights.book", compensation="flights.cancel")
    new.remote("charge", command="cards.charge", pivot=True)
    assert changes(old.document(), new.document()) == [
        "step 'charge' added",
        "step 'rent_car' removed",
        "steps reordered: ['book_flight', 'book_hotel'] -> ['book_hotel', 'book_flight']",
    ]


def test_each_changed_option_of_a_step_is_named_with_both_values() -> None:
    old = trip()
    old.remote("book_hotel", command="hotels.book", compensation="hotels.cancel")
    new = trip()
    new.remote(
        "book_hotel",
        command="hotels.book",
        compensation="hotels.cancel",
        timeout=90,
        heartbeat_timeout=10,
    )
    assert changes(old.document(), new.document()) == [
        "step 'book_hotel': heartbeat_timeout unset -> 10",
        "step 'book_hotel': timeout 30.0 -> 90",
    ]


def test_saga_level_changes_are_named() -> None:
    old, new = trip(), trip(deadline=600, input=TripWithDate)
    for s in (old, new):
        s.remote("book_hotel", command="hotels.book", compensation="hotels.cancel")
    assert changes(old.document(), new.document()) == [
        "the input model's schema changed",
        "deadline: unset -> 600",
    ]


def receipt(ctx: GuardContext) -> dict[str, Any]:
    return {"trip": ctx.input["trip_id"]}


def booking(ctx: GuardContext) -> dict[str, Any]:
    return dict(ctx.results)


class Booked(BaseModel):
    booking_id: int


def test_data_flow_options_are_named_by_the_functions_and_models_they_use() -> None:
    old = trip()
    old.remote("book_hotel", command="hotels.book", compensation="hotels.cancel")
    new = Saga("trip", version=1, input=Trip, output=receipt)
    new.remote(
        "book_hotel",
        command="hotels.book",
        compensation="hotels.cancel",
        payload=booking,
        result=Booked,
    )
    assert changes(old.document(), new.document()) == [
        f'output: unset -> "{__name__}.receipt"',
        f"step 'book_hotel': payload unset -> \"{__name__}.booking\"",
        f"step 'book_hotel': result unset -> \"{__name__}.Booked\"",
    ]
