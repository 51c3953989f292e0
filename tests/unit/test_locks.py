"""Semantic locks, the pure parts: what a definition may declare, and the resources a start's
input names."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator import Saga
from orchestrator.errors import DefinitionError, InvalidInput
from orchestrator.locks import resources


class Edit(BaseModel):
    order_id: str
    customer_id: int = 7
    note: str | None = None


def edit(**options: Any) -> Saga:
    saga = Saga("edit", input=Edit, **options)
    saga.remote("write", command="orders.write", compensation=None)
    return saga


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"locks": ("order:{id}",)}, "names {id}, which is not a field of the input model"),
        ({"locks": ("order:{order_id.x}",)}, "plain {field} placeholders"),
        ({"locks": ("order:{order_id[0]}",)}, "plain {field} placeholders"),
        ({"locks": ("order:{order_id:>5}",)}, "plain {field} placeholders"),
        ({"locks": ("order:{order_id!r}",)}, "plain {field} placeholders"),
        ({"locks": ("order:{}",)}, "plain {field} placeholders"),
        ({"locks": ("order:{order_id",)}, "not a valid template"),
        ({"locks": ("",)}, "non-empty string"),
        ({"locks": (42,)}, "non-empty string"),
        ({"locks": "order:{order_id}"}, "must be a tuple of templates"),
        ({"locks": ("o:{order_id}", "o:{order_id}")}, "twice"),
        ({"locks": ("o:{order_id}",), "on_locked": "block"}, "on_locked must be one of"),
        ({"locks": ("o:{order_id}",), "on_locked": "wait"}, "needs lock_wait=<seconds>"),
        ({"locks": ("o:{order_id}",), "on_locked": "wait", "lock_wait": 0}, "positive number"),
        ({"locks": ("o:{order_id}",), "on_locked": "wait", "lock_wait": True}, "positive"),
        ({"locks": ("o:{order_id}",), "lock_wait": 5}, "only applies to on_locked='wait'"),
        ({"locks": ("o:{order_id}",), "on_locked": "queue", "lock_wait": 5}, "only applies"),
        ({"on_locked": "queue"}, "without locks does nothing"),
    ],
)
def test_bad_lock_options_say_what_to_fix(options: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match="saga 'edit' v1") as refused:
        edit(**options)
    assert message in str(refused.value)


def test_lock_options_are_kept_and_fingerprinted_only_when_declared() -> None:
    plain = edit()
    assert plain.locks == () and plain.on_locked == "reject"
    assert "locks" not in plain.document()  # fingerprints of existing sagas do not change

    waiting = edit(
        locks=("order:{order_id}", "customer:{customer_id}"), on_locked="wait", lock_wait=2
    )
    assert waiting.locks == ("order:{order_id}", "customer:{customer_id}")
    assert waiting.document()["locks"] == {
        "resources": ["order:{order_id}", "customer:{customer_id}"],
        "on_locked": "wait",
        "lock_wait": 2,
    }
    queued = edit(locks=("order:{order_id}",), on_locked="queue")
    assert len({plain.fingerprint, waiting.fingerprint, queued.fingerprint}) == 3
    assert edit(locks=["order:{order_id}"]).locks == ("order:{order_id}",)


def test_resources_fill_the_templates_sorted_and_once() -> None:
    templates = ("order:{order_id}", "customer:{customer_id}", "o:{order_id}/c:{customer_id}")
    found = resources("edit", templates, {"order_id": "o-42", "customer_id": 7})
    assert found == ("customer:7", "o:o-42/c:7", "order:o-42")
    assert resources("edit", ("order:{order_id}", "order:{order_id}"), {"order_id": "1"}) == (
        "order:1",
    )
    assert resources("edit", ("global", "{{literal}}"), {}) == ("global", "{literal}")
    assert resources("edit", (), {"order_id": "1"}) == ()


@pytest.mark.parametrize("value", [None, {"a": 1}, [1, 2]])
def test_a_lock_needs_a_plain_value(value: object) -> None:
    with pytest.raises(InvalidInput, match=r"lock 'note:\{note\}' needs a value for 'note'"):
        resources("edit", ("note:{note}",), {"note": value})
