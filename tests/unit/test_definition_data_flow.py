"""The data-flow options of a definition (`payload=`, `result=`, `output=`): refused when
malformed, and in the fingerprint only when used, so definitions registered before they
existed keep their fingerprint."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator.definition import GuardContext, Saga
from orchestrator.errors import DefinitionError
from sagas.order import order_v2
from tests.e2e.express_order import express
from tests.unit.builders import Input, shop


class Charged(BaseModel):
    charge_id: int


class Refunded(BaseModel):
    refund_id: int


def by_charge(ctx: GuardContext) -> dict[str, Any]:
    return {"charge": ctx.results["charge"]}


def by_input(ctx: GuardContext) -> dict[str, Any]:
    return dict(ctx.input)


def test_payload_must_be_callable() -> None:
    with pytest.raises(DefinitionError, match=r"step 'notify'.*payload= must be a function"):
        shop().remote("notify", command="mail.send", compensation=None, payload={"a": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [dict, Charged(charge_id=1), "Charged"])
def test_result_must_be_a_model_class(bad: Any) -> None:
    with pytest.raises(DefinitionError, match="result= must be a pydantic BaseModel subclass"):
        shop().remote("charge", command="payments.charge", compensation=None, result=bad)


def test_output_must_be_callable() -> None:
    with pytest.raises(DefinitionError, match="saga 'shop': output= must be a function"):
        Saga("shop", input=Input, output={"done": True})  # type: ignore[arg-type]


def test_local_and_map_steps_take_payload_and_result() -> None:
    s = shop()

    @s.local(compensate=None, payload=by_input, result=Charged)
    async def charge(ctx: Any) -> dict[str, Any]:
        return {"charge_id": 1}

    s.map("copy", command="files.copy", items=lambda ctx: [], compensation=None, payload=by_input)
    assert s.step("charge").payload is by_input and s.step("charge").result is Charged
    assert s.step("copy").document()["payload"].endswith("test_definition_data_flow.by_input")


def with_charge(**options: Any) -> Saga:
    s = Saga("shop", input=Input, **options.pop("saga", {}))
    s.remote("charge", command="payments.charge", pivot=True, **options)
    return s


def test_payload_and_result_are_named_in_the_fingerprint_only_when_used() -> None:
    plain = with_charge()
    assert {"payload", "result"}.isdisjoint(plain.steps[0].document())
    assert "output" not in plain.document()
    prints = {
        plain.fingerprint,
        with_charge(payload=by_charge).fingerprint,
        with_charge(payload=by_input).fingerprint,
        with_charge(result=Charged).fingerprint,
        with_charge(result=Refunded).fingerprint,
        with_charge(saga={"output": by_charge}).fingerprint,
        with_charge(saga={"output": by_input}).fingerprint,
    }
    assert len(prints) == 7
    doc = with_charge(payload=by_charge, result=Charged).steps[0].document()
    assert doc["payload"] == f"{__name__}.by_charge"
    assert doc["result"] == f"{__name__}.Charged"
    assert with_charge(saga={"output": by_charge}).document()["output"] == f"{__name__}.by_charge"


def test_definitions_without_them_keep_the_fingerprints_they_were_registered_with() -> None:
    # Computed before payload=, result= and output= existed. A change here stops every
    # orchestrator whose database registered these versions.
    assert order_v2.fingerprint == (
        "9f290e445defd9cda6d1883a104d9deda1dee1628b4cc16abc960d04ce4fce81"
    )
    assert express.fingerprint == (
        "f159215327dec4d05cf52aa068a27e093fd41bc8a85987c815986ca02fba4a17"
    )
