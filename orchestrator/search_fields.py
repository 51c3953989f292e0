"""Search fields: business fields of a saga's input or output, indexed so sagas can be found
by them (`saga list --where customer_id=c-17`).

A definition declares them, `Saga(..., search=("customer_id", "amount",
SearchField("output.charge_id", type=int)))`, and each is resolved when the definition is
built: where its value comes from (the input, or with `output.` the saga's output), the name
filters use, and its kind, which says how values compare (text, number, bool, time). An input
field's kind comes from the input model's annotation; an output field's must be declared, as
the output has no model. The machine extracts the values when the saga starts (input) and
when it completes (output); the store keeps them typed, one row per field.
"""

from __future__ import annotations

import enum
import math
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Union, get_args, get_origin
from uuid import UUID

from pydantic import BaseModel

from orchestrator.errors import DefinitionError

# A field's name as filters write it: `customer_id`, `shipping.country`.
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
MAX_NAME_LENGTH = 63
# Text values longer than this are not indexed (a btree entry has a size limit, and search
# fields are for ids, names and codes): such a saga is not found by that field.
MAX_TEXT_LENGTH = 200
OUTPUT = "output"
INPUT = "input"
Source = Literal["input", "output"]


class SearchKind(enum.StrEnum):
    """How a field's values are stored and compared."""

    TEXT = "text"  # by code point, as PostgreSQL's "C" collation orders them
    NUMBER = "number"  # exact decimal: int, float and Decimal alike
    BOOL = "bool"  # = and != only
    TIME = "time"  # a moment; a value without an offset is UTC


# The types a field may have or declare, and their kind. bool before int: it is one.
_KINDS: tuple[tuple[type, SearchKind], ...] = (
    (bool, SearchKind.BOOL),
    (int, SearchKind.NUMBER),
    (float, SearchKind.NUMBER),
    (Decimal, SearchKind.NUMBER),
    (datetime, SearchKind.TIME),
    (str, SearchKind.TEXT),
    (UUID, SearchKind.TEXT),
)
TYPES = "str, int, float, Decimal, bool or datetime"
SearchValueType = str | Decimal | bool | datetime


@dataclass(frozen=True)
class SearchField:
    """A search field declared with more than its path: `SearchField("output.charge_id",
    type=int)`. `path`: an input field (`customer_id`, or through nested models
    `shipping.country`; `input.` may prefix it) or, after `output.`, a key of the saga's
    output. `type`: one of str, int, float, Decimal, bool, datetime; required for an output
    field, else inferred from the input model. `name`: what filters call it (default: the
    path without its `input.`/`output.` prefix)."""

    path: str
    type: type | None = None
    name: str | None = None


@dataclass(frozen=True)
class Indexed:
    """A search field as resolved against its definition."""

    name: str
    source: Source
    keys: tuple[str, ...]  # the path into the input or output, one key per level
    kind: SearchKind

    def document(self) -> dict[str, Any]:
        """What the definition's fingerprint holds of it."""
        return {
            "name": self.name,
            "source": self.source,
            "path": ".".join(self.keys),
            "kind": self.kind.value,
        }


@dataclass(frozen=True)
class SearchValue:
    """One field's value of one saga, typed by its kind."""

    name: str
    kind: SearchKind
    value: SearchValueType


def resolve(
    where: str,
    declared: Sequence[str | SearchField],
    input_model: type[BaseModel],
    *,
    has_output: bool,
) -> tuple[Indexed, ...]:
    """The definition's search fields, checked; raises DefinitionError saying what to fix."""
    if isinstance(declared, str | SearchField):  # search="x" would iterate its characters
        raise DefinitionError(
            f"{where}: search must be a tuple of fields, e.g. search=({declared!r},)"
        )
    fields = tuple(_resolve_one(where, d, input_model, has_output) for d in declared)
    names = [f.name for f in fields]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DefinitionError(
            f"{where}: search names {', '.join(map(repr, twice))} twice; remove one, or give "
            "one another name with SearchField(path, name=...)"
        )
    return fields


def _resolve_one(
    where: str, declared: str | SearchField, model: type[BaseModel], has_output: bool
) -> Indexed:
    spec = SearchField(declared) if isinstance(declared, str) else declared
    if not isinstance(spec, SearchField) or not isinstance(spec.path, str):
        raise DefinitionError(
            f"{where}: search field {declared!r} must be a path such as 'customer_id' or "
            "SearchField('output.charge_id', type=int)"
        )
    path = spec.path
    where = f"{where}: search field {path!r}"
    if not NAME_RE.match(path):
        raise DefinitionError(
            f"{where} is not a path: use field names (letters, digits, '_') joined by '.'"
        )
    head, _, rest = path.partition(".")
    source: Source = "output" if head == OUTPUT and rest else "input"
    keys = tuple((rest if head in (INPUT, OUTPUT) and rest else path).split("."))
    name = spec.name if spec.name is not None else ".".join(keys)
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > MAX_NAME_LENGTH:
        raise DefinitionError(
            f"{where}: name {name!r} must be letters, digits and '_' (parts joined by '.'), "
            f"at most {MAX_NAME_LENGTH} characters"
        )
    declared_kind = None if spec.type is None else _declared_kind(where, spec.type)
    if source == OUTPUT:
        if not has_output:
            raise DefinitionError(
                f"{where} reads the saga's output, but the saga has no output=: add "
                "output=<function of the context returning a dict>, or index an input field"
            )
        if declared_kind is None:
            raise DefinitionError(
                f"{where} reads the saga's output, which has no model to infer its type "
                f"from: declare it, SearchField({path!r}, type=int) (one of {TYPES})"
            )
        return Indexed(name, source, keys, declared_kind)
    kind = _input_kind(where, model, keys, declared_kind)
    return Indexed(name, source, keys, kind)


def _declared_kind(where: str, declared: object) -> SearchKind:
    kind = next((k for t, k in _KINDS if declared is t), None)
    if kind is None:
        raise DefinitionError(f"{where}: type={declared!r} is not one of {TYPES}")
    return kind


def _input_kind(
    where: str, model: type[BaseModel], keys: tuple[str, ...], declared: SearchKind | None
) -> SearchKind:
    """The kind of the input field at `keys`, walking nested models, checked against a
    declared type when there is one."""
    annotation: Any = model
    for depth, key in enumerate(keys):
        current = _optional_of(annotation)
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            walked = ".".join(keys[:depth])
            raise DefinitionError(
                f"{where}: {walked!r} is not a model with fields, so it has no field {key!r}"
            )
        fields = current.model_fields
        if key not in fields:
            raise DefinitionError(
                f"{where} is not a field of the input model {current.__name__} (fields: "
                f"{', '.join(sorted(fields)) or 'none'}); fix the path, or for the saga's "
                "output write 'output.<key>'"
            )
        annotation = fields[key].annotation
    inferred = _kind_of(annotation)
    if declared is not None:
        if inferred is not None and inferred != declared:
            raise DefinitionError(
                f"{where}: the input model says {_show(annotation)} ({inferred.value}), "
                f"type= says {declared.value}; leave type= out or make them agree"
            )
        return declared
    if inferred is None:
        raise DefinitionError(
            f"{where}: its type {_show(annotation)} cannot be indexed; a search field is "
            f"one of {TYPES} (or an Optional of one); for an annotation this cannot read "
            "(Any, a union) whose values are one of those, declare it: SearchField(path, type=str)"
        )
    return inferred


def _optional_of(annotation: Any) -> Any:
    """`X` of `X | None`; the annotation itself otherwise."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _kind_of(annotation: Any) -> SearchKind | None:
    current = _optional_of(annotation)
    if get_origin(current) is Literal:
        values = get_args(current)
        return SearchKind.TEXT if values and all(isinstance(v, str) for v in values) else None
    if not isinstance(current, type):
        return None
    if issubclass(current, enum.Enum):
        return SearchKind.TEXT if issubclass(current, str) else None
    return next((k for t, k in _KINDS if issubclass(current, t)), None)


def _show(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def values(fields: Sequence[Indexed], source: Source, data: Mapping[str, Any]) -> list[SearchValue]:
    """The values of the fields of `source` in `data` (a saga's validated input as JSON, or
    its output). A field that is absent, null, of another type, or text over
    MAX_TEXT_LENGTH, gets no value: that saga is not found by it."""
    found = []
    for field in fields:
        if field.source != source:
            continue
        raw: Any = data
        for key in field.keys:
            raw = raw.get(key) if isinstance(raw, Mapping) else None
        value = typed(field.kind, raw)
        if value is not None:
            found.append(SearchValue(field.name, field.kind, value))
    return found


def typed(kind: SearchKind, raw: Any) -> SearchValueType | None:
    """A JSON value as a value of `kind`; None when it is not one."""
    if raw is None:
        return None
    if kind == SearchKind.BOOL:
        return raw if isinstance(raw, bool) else None
    if kind == SearchKind.TEXT:
        return raw if isinstance(raw, str) and len(raw) <= MAX_TEXT_LENGTH else None
    if kind == SearchKind.NUMBER:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            return None
        if isinstance(raw, float) and not math.isfinite(raw):
            return None
        try:
            number = Decimal(str(raw))
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    if isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            return None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return None
