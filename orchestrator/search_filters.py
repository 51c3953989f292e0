"""Filters on search fields: `customer_id=c-17`, `amount>1000`, as `saga list --where`, the
API's `where=` and the dashboard write them, parsed against the fields the loaded definitions
declare (orchestrator/search_fields.py) into `SearchCondition`s that `SagaQuery` carries.

A condition holds for a saga that has a value for the field and whose value compares true
with the condition's: a saga without one (another saga, a version without the field, a null
or unindexed value) matches no condition, `!=` included.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from orchestrator.errors import SagaError
from orchestrator.search_fields import (
    MAX_TEXT_LENGTH,
    SearchKind,
    SearchValue,
    SearchValueType,
)

Op = Literal["=", "!=", ">", ">=", "<", "<="]
OPS: tuple[Op, ...] = ("=", "!=", ">", ">=", "<", "<=")
MAX_CONDITIONS = 10
# Each operator as a function: of two values here, of a column and a value in SQLAlchemy.
COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
# NAME OP VALUE; the longest operator first, so `a>=1` is not `a > "=1"`.
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(!=|>=|<=|=|>|<)(.*)$", re.DOTALL)
SYNTAX = "NAME OP VALUE with OP one of = != > >= < <= (customer_id=c-17, amount>1000)"

# Search field name -> its kind -> the definitions ("order v4") declaring it so.
DeclaredFields = Mapping[str, Mapping[SearchKind, Sequence[str]]]


class InvalidFilter(SagaError):
    """A search filter that cannot be applied; the message says what to write instead."""


@dataclass(frozen=True)
class SearchCondition:
    """Sagas whose value of search field `name` compares `op` to `value` (of `kind`)."""

    name: str
    op: Op
    kind: SearchKind
    value: SearchValueType

    def holds(self, found: SearchValue | None) -> bool:
        """Whether a saga with `found` as its value of the field (None: none) matches."""
        if found is None or found.kind != self.kind:
            return False
        return bool(COMPARE[self.op](found.value, self.value))


def conditions(texts: Sequence[str], fields: DeclaredFields) -> tuple[SearchCondition, ...]:
    """Each of `texts` parsed against the declared `fields`; raises InvalidFilter."""
    if len(texts) > MAX_CONDITIONS:
        raise InvalidFilter(
            f"{len(texts)} search filters given; at most {MAX_CONDITIONS} are allowed"
        )
    return tuple(parse(text, fields) for text in texts)


def parse(text: str, fields: DeclaredFields) -> SearchCondition:
    matched = _CONDITION.match(text)
    if matched is None:
        raise InvalidFilter(f"search filter {text!r} is not {SYNTAX}")
    name, op, raw = matched.group(1), matched.group(2), matched.group(3).strip()
    declared = fields.get(name)
    if not declared:
        known = ", ".join(sorted(fields)) or "none"
        raise InvalidFilter(
            f"search filter {text!r}: no loaded saga declares a search field {name!r} "
            f"(search fields there are: {known})"
        )
    if len(declared) > 1:
        kinds = "; ".join(f"{k.value} in {', '.join(sagas)}" for k, sagas in declared.items())
        raise InvalidFilter(
            f"search filter {text!r}: sagas declare {name!r} with different types ({kinds}): "
            "filter by one saga name as well"
        )
    (kind,) = declared
    assert op in OPS
    return SearchCondition(name, op, kind, value_of(text, name, op, kind, raw))


def value_of(text: str, name: str, op: str, kind: SearchKind, raw: str) -> SearchValueType:
    """The filter's value as a value of the field's kind."""
    where = f"search filter {text!r}: {name!r} is"
    if kind == SearchKind.BOOL:
        if op not in ("=", "!="):
            raise InvalidFilter(f"{where} true or false: compare it with = or !=")
        if raw.lower() not in ("true", "false"):
            raise InvalidFilter(f"{where} true or false, not {raw!r}")
        return raw.lower() == "true"
    if kind == SearchKind.NUMBER:
        try:
            number = Decimal(raw)
        except InvalidOperation:
            number = Decimal("NaN")
        if not number.is_finite():
            raise InvalidFilter(f"{where} a number: {raw!r} is not one (write 1000 or 12.50)")
        return number
    if kind == SearchKind.TIME:
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise InvalidFilter(
                f"{where} a moment: {raw!r} is not ISO 8601 (2026-12-01T09:00:00Z; without an "
                "offset it is UTC)"
            ) from None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    if len(raw) > MAX_TEXT_LENGTH:
        raise InvalidFilter(
            f"{where} text indexed up to {MAX_TEXT_LENGTH} characters; this value has "
            f"{len(raw)}, so no saga can match it"
        )
    return raw
