"""The saga DSL refuses bad definitions with a message that says what to fix; the registry
finds definitions by name and version and explains what it cannot find."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator.definition import (
    DEFAULT_COMPENSATION_RETRY,
    DEFAULT_RETRY,
    Saga,
    StepContext,
)
from orchestrator.errors import DefinitionError, UnknownSaga
from orchestrator.registry import Registry, load_modules
from orchestrator.retry import Retry
from sagas.order import OrderPlaced
from sagas.order import order_v1 as order_saga  # sequential: these tests follow it step by step


class Input(BaseModel):
    n: int = 0


def saga(name: str = "shop", version: int = 1, **kwargs: Any) -> Saga:
    return Saga(name, version=version, input=Input, **kwargs)


def two_step(version: int = 1, **charge: Any) -> Saga:
    """reserve (compensatable) -> charge (the pivot); `charge` overrides the pivot's options."""
    s = saga(version=version)
    s.remote("reserve", command="stock.reserve", compensation="stock.release")
    s.remote("charge", **{"command": "payments.charge", "pivot": True, **charge})
    return s


# -- step classes: compensatable, at most one pivot, then retriable -------------------------------


def test_a_second_pivot_is_refused_naming_the_first() -> None:
    s = saga()
    s.remote("charge", command="payments.charge", pivot=True)
    with pytest.raises(DefinitionError, match=r"pivot already \('charge'\).*at most one pivot"):
        s.remote("ship", command="shipping.ship", pivot=True)
    assert [step.name for step in s.steps] == ["charge"]


def test_a_pivot_with_a_compensation_is_refused() -> None:
    with pytest.raises(DefinitionError, match="pivot is never compensated; remove compensation="):
        saga().remote(
            "charge", command="payments.charge", compensation="payments.refund", pivot=True
        )


def test_a_compensation_after_the_pivot_is_refused() -> None:
    s = two_step()
    with pytest.raises(
        DefinitionError,
        match=r"comes after the pivot 'charge'.*remove compensation= or move the step",
    ):
        s.remote("notify", command="mail.send", compensation="mail.unsend")
    s.remote(
        "notify", command="mail.send", compensation=None
    )  # without a compensation it is a retriable step
    assert [step.name for step in s.steps] == ["reserve", "charge", "notify"]
    assert s.pivot_index == 1


def test_steps_before_the_pivot_may_have_no_compensation() -> None:
    s = saga()
    s.remote("check", command="fraud.check", compensation=None)
    s.remote("charge", command="payments.charge", pivot=True)
    assert s.step("check").compensation is None and s.pivot_index == 1


def test_duplicate_step_names_are_refused() -> None:
    s = two_step()
    with pytest.raises(DefinitionError, match="'reserve': a step with this name exists already"):
        s.remote("reserve", command="stock.reserve2", compensation=None)


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["charge", "Payments.charge", "payments.", ".charge", "a b.c"])
def test_bad_command_names_are_refused_with_an_example(command: str) -> None:
    with pytest.raises(
        DefinitionError, match=r"not a valid command name: use '<service>\.<command>'"
    ):
        saga().remote("charge", command=command, compensation=None)


def test_bad_compensation_names_are_refused() -> None:
    with pytest.raises(DefinitionError, match="compensation 'release' is not a valid command"):
        saga().remote("reserve", command="stock.reserve", compensation="release")


@pytest.mark.parametrize("name", ["Reserve", "1st", "re-serve", "", "_x"])
def test_bad_step_names_are_refused(name: str) -> None:
    with pytest.raises(DefinitionError, match="step name is invalid: use lowercase"):
        saga().remote(name, command="stock.reserve", compensation=None)


@pytest.mark.parametrize("name", ["Order", "order-v2", "", "9lives"])
def test_bad_saga_names_are_refused(name: str) -> None:
    with pytest.raises(DefinitionError, match=r"saga name .* is invalid: use lowercase"):
        saga(name)


@pytest.mark.parametrize("version", [0, -1, True, 1.5, "1"])
def test_bad_versions_are_refused(version: Any) -> None:
    with pytest.raises(DefinitionError, match="version must be an integer >= 1"):
        saga(version=version)


# -- timeouts and input ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -5, 0.0, float("nan"), float("inf"), True, "30"])
def test_non_positive_or_non_finite_step_timeouts_are_refused(bad: Any) -> None:
    with pytest.raises(DefinitionError, match="timeout must be a positive number of seconds"):
        saga().remote("reserve", command="stock.reserve", timeout=bad, compensation=None)
    with pytest.raises(
        DefinitionError, match="compensation_timeout must be a positive number of seconds"
    ):
        saga().remote(
            "reserve",
            command="stock.reserve",
            compensation="stock.release",
            compensation_timeout=bad,
        )


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_non_positive_saga_timeouts_are_refused(bad: float) -> None:
    with pytest.raises(DefinitionError, match="timeout must be a positive number of seconds"):
        saga(timeout=bad)


@pytest.mark.parametrize("bad", [dict, Input(), "Input", None])
def test_input_must_be_a_pydantic_model_class(bad: Any) -> None:
    with pytest.raises(DefinitionError, match="input must be a pydantic BaseModel subclass"):
        Saga("shop", input=bad)


def test_an_empty_saga_fails_validation() -> None:
    s = saga()
    with pytest.raises(DefinitionError, match="'shop' v1 has no steps; add one"):
        s.validate()


def test_step_defaults_come_from_the_saga() -> None:
    policy = Retry(max_attempts=7)
    s = saga(timeout=12, retry=policy)
    s.remote("reserve", command="stock.reserve", compensation="stock.release")
    s.remote(
        "charge", command="payments.charge", timeout=3, compensation_timeout=4, compensation=None
    )
    reserve, charge = s.steps
    assert (reserve.timeout, reserve.compensation_timeout, reserve.retry) == (12, 12, policy)
    assert reserve.compensation_retry == DEFAULT_COMPENSATION_RETRY
    assert (charge.timeout, charge.compensation_timeout) == (3, 4)
    assert saga().timeout == 30 and saga().retry == DEFAULT_RETRY


# -- local steps ----------------------------------------------------------------------------------


def test_local_steps_get_local_command_names() -> None:
    s = saga("report")

    async def undo(ctx: StepContext) -> None:
        return None

    @s.local(compensate=undo)
    async def render(ctx: StepContext) -> dict[str, str]:
        return {"ok": ctx.step}

    @s.local("publish_it", pivot=True)
    async def publish(ctx: StepContext) -> None:
        return None

    first, second = s.steps
    assert (first.name, first.command, first.compensation) == (
        "render",
        "local.report.render",
        "local.report.render.compensate",
    )
    assert first.local and first.handler is render and first.compensation_handler is undo
    assert (second.name, second.command, second.compensation) == (
        "publish_it",
        "local.report.publish_it",
        None,
    )
    assert second.pivot and second.handler is publish


def test_local_steps_follow_the_same_rules() -> None:
    s = saga("report")

    async def undo(ctx: StepContext) -> None:
        return None

    with pytest.raises(DefinitionError, match="pivot is never compensated"):

        @s.local(compensate=undo, pivot=True)
        async def charge(ctx: StepContext) -> None:
            return None

    with pytest.raises(DefinitionError, match="step name is invalid"):

        @s.local()
        async def Render(ctx: StepContext) -> None:  # the uppercase name is the point
            return None


# -- fingerprint ----------------------------------------------------------------------------------


def test_fingerprint_is_stable_for_equal_definitions() -> None:
    assert two_step().fingerprint == two_step().fingerprint
    assert len(two_step().fingerprint) == 64


@pytest.mark.parametrize(
    "charge",
    [
        {"command": "payments.capture"},
        {"timeout": 5},
        {"retry": Retry(max_attempts=9)},
        {"compensation_timeout": 7},
        {"pivot": False, "compensation": None},
    ],
)
def test_fingerprint_changes_when_a_step_changes(charge: dict[str, Any]) -> None:
    assert two_step(**charge).fingerprint != two_step().fingerprint


def test_fingerprint_changes_when_a_step_is_added() -> None:
    longer = two_step()
    longer.remote("notify", command="mail.send", compensation=None)
    assert longer.fingerprint != two_step().fingerprint


def test_fingerprint_covers_the_input_schema_and_the_version() -> None:
    class Other(BaseModel):
        m: str

    a = Saga("shop", input=Input)
    b = Saga("shop", input=Other)
    c = Saga("shop", version=2, input=Input)
    for s in (a, b, c):
        s.remote("reserve", command="stock.reserve", compensation=None)
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3


def test_order_saga_shape() -> None:
    assert [s.name for s in order_saga.steps] == [
        "reserve_credit",
        "reserve_stock",
        "charge_payment",
        "notify_customer",
    ]
    assert order_saga.pivot_index == 2
    assert order_saga.input is OrderPlaced
    assert [s.compensation for s in order_saga.steps] == [
        "customers.release_credit",
        "inventory.release",
        None,
        None,
    ]


# -- registry -------------------------------------------------------------------------------------


def test_registry_gets_the_newest_version_unless_one_is_pinned() -> None:
    v1, v2 = two_step(1), two_step(2)
    registry = Registry([v2, v1, order_saga])
    assert registry.get("shop") is v2
    assert registry.get("shop", 1) is v1
    assert registry.names() == ["order", "shop"]
    assert registry.commands() == {
        "stock.reserve",
        "stock.release",
        "payments.charge",
        "customers.reserve_credit",
        "customers.release_credit",
        "inventory.reserve",
        "inventory.release",
        "notifications.order_confirmed",
    }
    assert sorted((r.name, r.version) for r in registry.records()) == [
        ("order", 1),
        ("shop", 1),
        ("shop", 2),
    ]
    assert {r.fingerprint for r in registry.records() if r.name == "shop"} == {
        v1.fingerprint,
        v2.fingerprint,
    }


def test_unknown_saga_error_lists_the_known_names() -> None:
    registry = Registry([two_step(), order_saga])
    with pytest.raises(UnknownSaga, match="no saga named 'nope'; known: order, shop"):
        registry.get("nope")
    with pytest.raises(UnknownSaga, match="known: none"):
        Registry().get("nope")
    with pytest.raises(UnknownSaga, match="'shop' has no version 3 loaded"):
        registry.get("shop", 3)


def test_registry_refuses_the_same_version_defined_twice_and_empty_sagas() -> None:
    registry = Registry([two_step()])
    registry.add(registry.get("shop"))  # the same object again is fine
    with pytest.raises(DefinitionError, match="'shop' v1 is defined twice; bump one version"):
        registry.add(two_step())
    with pytest.raises(DefinitionError, match="has no steps"):
        registry.add(saga("empty"))


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for throwaway saga modules (forgotten afterwards)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_load_modules_collects_every_saga_at_top_level(modules: Path) -> None:
    (modules / "tmp_sagas_ok.py").write_text(
        "from pydantic import BaseModel\n"
        "from orchestrator import Saga\n"
        "class In(BaseModel):\n    x: int\n"
        "first = Saga('first', input=In)\n"
        "first.remote('a', command='svc.a', compensation=None)\n"
        "second = Saga('second', version=3, input=In)\n"
        "second.remote('b', command='svc.b', compensation=None)\n"
    )
    registry = load_modules(["tmp_sagas_ok", "sagas.order"])
    assert registry.names() == ["first", "order", "second"]
    assert registry.get("second").version == 3


def test_load_modules_explains_a_missing_module() -> None:
    with pytest.raises(
        DefinitionError, match=r"cannot import saga module 'sagas.nope'.*check SAGA_MODULES"
    ):
        load_modules(["sagas.nope"])


def test_load_modules_explains_a_module_without_sagas(modules: Path) -> None:
    (modules / "tmp_sagas_none.py").write_text("x = 1\n")
    with pytest.raises(DefinitionError, match="'tmp_sagas_none' defines no Saga at its top level"):
        load_modules(["tmp_sagas_none"])


def test_load_modules_refuses_an_empty_saga(modules: Path) -> None:
    (modules / "tmp_sagas_empty.py").write_text(
        "from pydantic import BaseModel\n"
        "from orchestrator import Saga\n"
        "class In(BaseModel):\n    x: int\n"
        "empty = Saga('empty', input=In)\n"
    )
    with pytest.raises(DefinitionError, match="'empty' v1 has no steps"):
        load_modules(["tmp_sagas_empty"])


def test_load_modules_passes_on_a_definition_error_raised_at_import(modules: Path) -> None:
    (modules / "tmp_sagas_bad.py").write_text(
        "from pydantic import BaseModel\n"
        "from orchestrator import Saga\n"
        "class In(BaseModel):\n    x: int\n"
        "bad = Saga('bad', input=In)\n"
        "bad.remote('a', command='nodot')\n"
    )
    with pytest.raises(DefinitionError, match="'nodot' is not a valid command name"):
        load_modules(["tmp_sagas_bad"])
