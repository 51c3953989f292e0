"""The /api signals: a signal for a saga's wait step, by saga id or by start key. It goes
through Engine.signal like a signal from the broker: taken, held for a wait not begun yet, a
duplicate of one held or taken (nothing changes), or refused (recorded in the saga's history
and announced as `<saga>.signal_refused`), with the caller as its actor (`api:<who>`)."""

from __future__ import annotations

import uuid
from typing import Annotated
from uuid import UUID

from fastapi import Path, Query, Request

from adapters.http.api.context import CALLER, SagaId, actor_of, api_router, engine_of, retried
from adapters.http.auth import Caller
from adapters.http.models import SignalRequest, SignalResult
from adapters.http.problems import Problem, ProblemError, SignalRefusal, problem_responses
from adapters.rabbitmq.storable import check_storable
from orchestrator.errors import InvalidInput, Poison
from orchestrator.messages import MAX_KEY_LENGTH, MAX_NAME_LENGTH, SignalSaga
from orchestrator.signalling import SignalOutcome
from orchestrator.transition.signals import Refusal

router = api_router()

SignalName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=r"^[a-z][a-z0-9_]*$",
        description="The signal: the name of the wait step that waits for it.",
    ),
]

# A refusal's status: no such saga, a payload its wait does not take, else the saga's state.
_STATUS = {Refusal.UNKNOWN_SAGA: 404, Refusal.INVALID_PAYLOAD: 422}
_RESPONSES = {
    **problem_responses(404, 409, 422, models=(SignalRefusal, Problem)),
    **problem_responses(413, 503),
}
_DESCRIPTION = (
    "200 `taken` (the waiting step has it as its result), `held` (its wait has not begun, "
    "and takes it when it does) or `duplicate` (this `signal_id` was held or taken already: "
    "nothing changed). A refusal is a `signal-refused` problem whose `reason` names why and "
    "`detail` says it in words: 404 `unknown_saga`, 422 `invalid_payload`, 409 "
    "`ambiguous_key`, `not_waited_for`, `finished`, `wait_over`, `compensating`; it is "
    "recorded in the saga's history and announced as `<saga>.signal_refused`. Without a "
    "`signal_id` a new one is made and answered: send the signal again with it to be sure "
    "it is taken once."
)


@router.post(
    "/sagas/{saga_id}/signals/{name}",
    summary="Send a signal to a saga",
    description=_DESCRIPTION,
    responses=_RESPONSES,
)
async def signal_saga(
    request: Request,
    saga_id: SagaId,
    name: SignalName,
    body: SignalRequest,
    caller: Caller = CALLER,
) -> SignalResult:
    return await _signal(request, name, body, caller, saga_id=saga_id)


@router.post(
    "/sagas/by-key/{key:path}/signals/{name}",
    summary="Send a signal by start key",
    description=_DESCRIPTION + " Sagas of several names with this key: 409 `ambiguous_key` "
    "unless `saga` names one.",
    responses=_RESPONSES,
)
async def signal_by_key(
    request: Request,
    *,
    key: Annotated[
        str, Path(min_length=1, max_length=MAX_KEY_LENGTH, description="The start's key.")
    ],
    name: SignalName,
    body: SignalRequest,
    saga: Annotated[
        str | None, Query(max_length=MAX_NAME_LENGTH, description="Only this saga name.")
    ] = None,
    caller: Caller = CALLER,
) -> SignalResult:
    return await _signal(request, name, body, caller, key=key, saga=saga or None)


async def _signal(
    request: Request,
    name: str,
    body: SignalRequest,
    caller: Caller,
    *,
    saga_id: UUID | None = None,
    key: str | None = None,
    saga: str | None = None,
) -> SignalResult:
    engine = engine_of(request)
    try:
        # Valid JSON that PostgreSQL cannot store (a non-finite number) would fail the
        # transaction: a 422 saying so, not a 500.
        check_storable(await request.body())
    except Poison as exc:
        raise InvalidInput(str(exc)) from exc
    signal_id = body.signal_id or str(uuid.uuid4())
    signal = SignalSaga(
        saga_id=saga_id,
        key=key,
        saga=saga,
        signal=name,
        signal_id=signal_id,
        payload=body.payload,
    )
    outcome = await retried(lambda: engine.signal(signal, actor_of(caller, body.who)))
    if outcome.result == "refused":
        raise _refused(outcome, name, signal_id)
    assert outcome.saga_id is not None and outcome.status is not None
    return SignalResult(
        result=outcome.result, saga_id=outcome.saga_id, status=outcome.status, signal_id=signal_id
    )


def _refused(outcome: SignalOutcome, name: str, signal_id: str) -> ProblemError:
    reason = outcome.reason or ""
    return ProblemError(
        _STATUS.get(reason, 409),
        "signal-refused",
        "Signal refused",
        outcome.why or reason,
        members={"reason": reason, "signal": name, "signal_id": signal_id},
    )
