"""The API's request and response bodies (docs/http-api.md): pydantic models, so the
OpenAPI document at /openapi.json describes every field."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticUseDefault

from adapters.saga_redaction import Redactor
from orchestrator.bulk import BulkReport, Outcome
from orchestrator.messages import MAX_KEY_LENGTH, MAX_NAME_LENGTH, ParentRef, aware_utc
from orchestrator.ports import HistoryRecord, SagaQuery
from orchestrator.registry import Registry
from orchestrator.saga import Saga
from orchestrator.search_filters import MAX_CONDITIONS
from orchestrator.state import SagaState, SagaStatus, StepState, StepStatus
from orchestrator.waiting import WaitStage, WaitView, waiting_for, waits

_ACTIVE = (StepStatus.RUNNING, StepStatus.COMPENSATING)


class SagaSummary(BaseModel):
    saga_id: UUID
    saga: str = Field(description="The saga's name.")
    version: int
    key: str = Field(description="The start's idempotency key.")
    status: SagaStatus
    status_since: datetime | None = Field(description="When it entered its current status.")
    created_at: datetime
    updated_at: datetime
    error: dict[str, Any] | None = Field(description="Why it failed or is compensating.")
    current_steps: list[str] = Field(description="Steps running or compensating now.")
    waiting_for: list[str] = Field(
        default_factory=list,
        description="Signals the saga waits for now: its wait steps that are waiting (each "
        "also in current_steps). Known for the saga versions this process loads.",
    )


StepKind = Literal["remote", "local", "map", "item", "child", "sleep", "wait"]


class WaitInfo(BaseModel):
    """A wait step: the signal it waits for and where the wait stands."""

    signal: str = Field(description="The signal's name (the step's).")
    stage: WaitStage = Field(
        description="pending (not begun), held (not begun; a signal came early and is kept "
        "for it), waiting (for its signal now), taken (its signal is its result), ended "
        "(skipped, timed out, failed or undone without one)."
    )
    timeout: float = Field(description="The longest wait, in seconds.")
    on_timeout: Literal["fail", "skip"]
    waiting_since: datetime | None = Field(description="While waiting: since when.")
    until: datetime | None = Field(description="While waiting: when the wait times out.")
    signal_id: str | None = Field(description="The id of the signal held or taken.")
    received_at: datetime | None = Field(description="When that signal came.")
    payload_schema: dict[str, Any] | None = Field(
        None,
        description="JSON Schema of the payload the wait takes (its result= model); null "
        "when it takes any JSON object.",
    )


class StepView(BaseModel):
    name: str
    index: int
    status: StepStatus
    attempt: int
    compensation_attempt: int
    result: Any = None
    error: dict[str, Any] | None
    item: int | None = Field(description="A map step's item number; null for other steps.")
    payload: Any = Field(
        None,
        description="A map item's item; a child step's input; what a step's payload= built "
        "(its commands carry it); a wait step's signal, held or taken ({signal_id, payload, "
        "received_at}). Null when its commands carry the saga's input.",
    )
    dispatched_at: datetime | None = Field(description="When its last command was sent.")
    started_at: datetime | None = Field(description="When its participant was first heard of.")
    due_at: datetime | None = Field(description="Its timeout, or when its next attempt is due.")
    kind: StepKind | None = Field(
        None,
        description="remote, local, map, item (a map step's item), child, sleep or wait; "
        "null when this process does not load the saga's version.",
    )
    wait: WaitInfo | None = Field(None, description="A wait step's signal and wait.")


class SagaDetail(SagaSummary):
    input: dict[str, Any]
    cancel_reason: str | None
    parent: ParentRef | None = Field(description="The parent saga step of a child saga.")
    deadline_at: datetime | None
    resume_status: SagaStatus | None = Field(
        description="Where a paused (or parked) saga carries on: running or compensating."
    )
    output: dict[str, Any] | None = Field(
        None,
        description="What the definition's output= made of the completed saga; null without "
        "output=, before it completes, or when output= failed (history: output_failed).",
    )
    steps: list[StepView]


class SagaPage(BaseModel):
    items: list[SagaSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class SagaList(BaseModel):
    items: list[SagaDetail]


class StatusCounts(BaseModel):
    counts: dict[SagaStatus, int] = Field(description="Every status, 0 included.")


class HistoryItem(BaseModel):
    seq: int
    at: datetime
    event: str
    step: str | None
    detail: dict[str, Any] | None
    actor: str = Field(description="Who caused it: engine, broker, operator:<who>, api:<who>.")


class HistoryPage(BaseModel):
    items: list[HistoryItem]


# -- requests ---------------------------------------------------------------------------


class _Request(BaseModel):
    # An unknown field is refused rather than ignored: a typo must not pass silently.
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        if not _storable(value):
            raise ValueError(
                "contains a NUL character or an unpaired surrogate, which cannot be stored"
            )
        return value


def _storable(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" not in value and not any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    return True


class SagaFilter(BaseModel):
    """Which sagas: every filter given must hold. An empty value is no filter (what an HTML
    form sends for a field left blank). The query of `GET /api/sagas`, and the `filter` of
    a bulk action, where an unknown field is refused: a misspelt filter must not widen it."""

    model_config = ConfigDict(extra="forbid")

    status: SagaStatus | None = Field(None, description="Only sagas in this status.")
    saga: str | None = Field(None, max_length=100, description="Saga name.")
    version: int | None = Field(None, ge=1, le=2**31 - 1)
    key: str | None = Field(None, max_length=MAX_KEY_LENGTH, description="Start key.")
    step: str | None = Field(
        None,
        max_length=200,
        description="Sagas where this step is running or compensating now, or failed and "
        "parked (waiting for an operator).",
    )
    created_after: datetime | None = Field(
        None, description="Created at or after this moment (ISO 8601; UTC without an offset)."
    )
    created_before: datetime | None = Field(None, description="Created before this moment.")
    in_status_for_minutes: int | None = Field(
        None, ge=0, le=10_000_000, description="In the current status for at least N minutes."
    )
    waiting_for: str | None = Field(
        None,
        max_length=MAX_NAME_LENGTH,
        description="Sagas waiting now for this signal (their wait step of that name is "
        "waiting), of the saga versions this process loads.",
    )
    where: list[Annotated[str, Field(max_length=300)]] = Field(
        [],
        max_length=MAX_CONDITIONS,
        description="Search field conditions, `NAME OP VALUE` with OP one of `= != > >= < <=` "
        "(`where=customer_id=c-17&where=amount>1000`, URL-encoded), on the search fields the "
        "saga versions this process loads declare; every one must hold.",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_default(cls, value: Any) -> Any:
        if value == "":
            raise PydanticUseDefault
        return value

    @field_validator("where", mode="before")
    @classmethod
    def _blank_conditions_are_none(cls, value: Any) -> Any:
        """A form's empty condition fields send `where=`: no condition."""
        return [v for v in value if v != ""] if isinstance(value, list) else value

    def query(
        self, registry: Registry, *, limit: int, after: tuple[datetime, UUID] | None = None
    ) -> SagaQuery:
        """The store's query for these filters; `registry`: the definitions that tell which
        steps are waits (for `waiting_for`) and declare the search fields (for `where`: raises
        InvalidFilter saying what to write when a condition cannot apply)."""
        return SagaQuery(
            status=self.status,
            saga=self.saga,
            key=self.key,
            version=self.version,
            step=self.step,
            created_after=None if self.created_after is None else aware_utc(self.created_after),
            created_before=None if self.created_before is None else aware_utc(self.created_before),
            in_status_for=(
                None
                if self.in_status_for_minutes is None
                else timedelta(minutes=self.in_status_for_minutes)
            ),
            waiting_for=None
            if self.waiting_for is None
            else registry.waiting_for(self.waiting_for),
            where=registry.search_filter(self.where, self.saga),
            after=after,
            limit=limit,
        )


class SagaFilters(SagaFilter):
    """`GET /api/sagas` query: the filters and the page. Unknown parameters are ignored."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = Field(
        None, max_length=200, description="`next_cursor` of the previous page."
    )


class StartRequest(_Request):
    saga: str = Field(min_length=1, max_length=100, examples=["order"])
    key: str = Field(
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Idempotency key: a second start with the same key starts nothing.",
        examples=["order-42"],
    )
    input: dict[str, Any] = Field(description="Validated against the saga's input model.")
    version: int | None = Field(
        None, ge=1, description="Pin a saga version; the newest loaded one when omitted."
    )


class StartResponse(BaseModel):
    saga_id: UUID | None = Field(description="null while the start waits for a semantic lock.")
    created: bool
    status: SagaStatus | None
    queued: bool = Field(False, description="The start waits for a semantic lock (202).")
    input_differs: bool = Field(
        False,
        description="A saga had this key already (200) and was started with other input: "
        "nothing new was started, and the repeat is recorded in its history "
        "(`start_repeated`). Use a new key to start another saga.",
    )


class KeyCancelResult(BaseModel):
    held: bool = Field(
        description="No saga had the key: the cancel is held (202) and applies when a start "
        "with this key arrives."
    )
    items: list[SagaDetail] = Field(
        description="The sagas cancelled (compensating, or cancelled at once); empty when held."
    )


class ActionRequest(_Request):
    reason: str = Field(
        min_length=1,
        max_length=1000,
        pattern=r"\S",
        description="Why; recorded in the saga's history.",
    )
    who: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Who acts; recorded in history (default: the token's name).",
    )


class SkipRequest(ActionRequest):
    step: str = Field(min_length=1, max_length=200, description="The step to treat as done.")
    result: Any = Field(None, description="The step's result; later steps may use it.")


class BulkRequest(ActionRequest):
    filter: SagaFilter = Field(
        description="Which sagas: at least one filter (422 without); the fields of "
        "`GET /api/sagas`'s query."
    )
    dry_run: bool = Field(
        False, description="Say how many and which sagas it would act on; change nothing."
    )
    limit: int = Field(
        1000,
        ge=1,
        le=10_000,
        description="Act on at most this many (newest activity first); `more` says whether "
        "others match.",
    )


class BulkSkipRequest(SkipRequest, BulkRequest):
    pass


class BulkRefusal(BaseModel):
    saga_id: UUID
    saga: str
    key: str
    outcome: Outcome = Field(
        description="changed: its status or revision moved since it was listed; "
        "not_applicable: the action does not apply to it as it stands; gone: deleted since; "
        "not_loaded: this process does not load its saga version."
    )
    why: str


class BulkResult(BaseModel):
    action: str
    dry_run: bool
    matched: int = Field(description="The sagas the filter matched, at most `limit`.")
    more: bool = Field(description="More sagas match beyond `limit`: send it again for them.")
    counts: dict[Outcome, int] = Field(
        description="How many came to each outcome (would, in a dry run), 0 included: "
        "applied, changed, not_applicable, gone, not_loaded; they sum to `matched`."
    )
    refusals: list[BulkRefusal] = Field(description="Each saga refused, and why.")
    sample: list[UUID] = Field(description="The first ids acted on (that would be, in a dry run).")


class SignalRequest(_Request):
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description="The signal's payload: the wait step's result, validated against its "
        "result= model.",
    )
    signal_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Idempotency key: the same id again changes nothing (a retried webhook). "
        "Default: a new UUID, answered back.",
    )
    who: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Who sends it; recorded in history (default: the token's name).",
    )


class SignalResult(BaseModel):
    result: Literal["taken", "held", "duplicate"] = Field(
        description="taken: the waiting step has it as its result; held: its wait has not "
        "begun, and takes it when it does; duplicate: this signal_id was held or taken "
        "already, nothing changed."
    )
    saga_id: UUID
    status: SagaStatus = Field(description="The saga's status after the signal.")
    signal_id: str


# -- from the engine's values -------------------------------------------------------------


def summary(state: SagaState, redact: Redactor, definition: Saga | None) -> SagaSummary:
    return SagaSummary(**_summary_fields(state, redact, definition))


def detail(state: SagaState, redact: Redactor, definition: Saga | None) -> SagaDetail:
    """The saga in full; `definition` (None when not loaded here) tells its steps' kinds."""
    views = waits(definition, state)
    return SagaDetail(
        **_summary_fields(state, redact, definition),
        input=redact(state.input),
        cancel_reason=state.cancel_reason,
        parent=state.parent,
        deadline_at=state.deadline_at,
        resume_status=state.resume_status,
        output=redact(state.output),
        steps=[_step(s, redact, definition, views.get(s.name)) for s in state.steps],
    )


def bulk_result(report: BulkReport) -> BulkResult:
    return BulkResult(
        action=report.action,
        dry_run=report.dry_run,
        matched=report.matched,
        more=report.more,
        counts=report.counts,
        refusals=[
            BulkRefusal(saga_id=r.saga_id, saga=r.saga, key=r.key, outcome=r.outcome, why=r.why)
            for r in report.refusals
        ],
        sample=list(report.sample),
    )


def history_item(record: HistoryRecord, redact: Redactor) -> HistoryItem:
    return HistoryItem(
        seq=record.seq,
        at=record.at,
        event=record.event,
        step=record.step,
        detail=redact(record.detail),
        actor=record.actor,
    )


def _summary_fields(state: SagaState, redact: Redactor, definition: Saga | None) -> dict[str, Any]:
    return {
        "saga_id": state.saga_id,
        "saga": state.name,
        "version": state.version,
        "key": state.key,
        "status": state.status,
        "status_since": state.status_since,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "error": redact(state.error),
        "current_steps": [s.name for s in state.steps if s.status in _ACTIVE],
        "waiting_for": waiting_for(waits(definition, state)),
    }


def _step(
    step: StepState, redact: Redactor, definition: Saga | None, wait: WaitView | None
) -> StepView:
    return StepView(
        name=step.name,
        index=step.index,
        status=step.status,
        attempt=step.attempt,
        compensation_attempt=step.compensation_attempt,
        result=redact(step.result),
        error=redact(step.error),
        item=step.item,
        payload=redact(step.payload),
        dispatched_at=step.dispatched_at,
        started_at=step.started_at,
        due_at=step.due_at,
        kind=None if definition is None else _kind(definition, step),
        wait=None if wait is None or definition is None else _wait(definition, wait),
    )


def _kind(definition: Saga, step: StepState) -> StepKind | None:
    if step.item is not None:
        return "item"
    if step.name not in {s.name for s in definition.steps}:
        return None  # a step of another definition under the same (name, version)
    spec = definition.step(step.name)
    if spec.wait:
        return "wait"
    if spec.sleep:
        return "sleep"
    if spec.map:
        return "map"
    if spec.child is not None:
        return "child"
    return "local" if spec.local else "remote"


def _wait(definition: Saga, view: WaitView) -> WaitInfo:
    model = definition.step(view.signal).result
    return WaitInfo(
        signal=view.signal,
        stage=view.stage,
        timeout=view.timeout,
        on_timeout=view.on_timeout,
        waiting_since=view.since,
        until=view.until,
        signal_id=view.signal_id,
        received_at=view.received_at,
        payload_schema=None if model is None else model.model_json_schema(),
    )
