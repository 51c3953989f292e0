"""`saga signal`: send a signal to a saga's wait step, as a person does who approves an order
or stands in for a webhook. On the database through the engine (Engine.signal, as from the
broker), or over the HTTP API (--url); what became of it is printed alike on both paths.

Its id is the signal's idempotency key: the command makes one up unless given `--id`, and
prints it, so the same signal can be sent again (after a timeout, say) and is taken once.
Exit codes: 0 taken, held or a duplicate; 1 refused (the reason is printed); 2 bad input;
3 no saga has this id or key.
"""

from __future__ import annotations

import getpass
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import typer

from adapters.cli import support as cs
from adapters.cli.api import EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_REFUSED, ApiClient
from adapters.cli.support import TokenOpt, UrlOpt

# The refusal that means the saga was not found (orchestrator.transition.signals.Refusal).
_UNKNOWN_SAGA = "unknown_saga"


def signal(
    saga: Annotated[str, typer.Argument(help="Saga id or start key.")],
    name: Annotated[str, typer.Argument(help="The signal: the name of the wait step.")],
    *,
    payload: Annotated[
        str, typer.Option(help="The payload as a JSON object: the wait step's result.")
    ] = "{}",
    signal_id: Annotated[
        str | None,
        typer.Option(
            "--id",
            help="The signal's id (its idempotency key): the same id again changes nothing. "
            "Default: a new one, printed.",
        ),
    ] = None,
    saga_name: Annotated[
        str | None,
        typer.Option("--saga", help="The saga's name, when sagas of several names have the key."),
    ] = None,
    who: Annotated[
        str | None, typer.Option(help="Who sends it; recorded in history. Default: your user name.")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Send a signal to the wait step of that name: taken if the step waits now, held if its
    wait has not begun (taken when it does). Exit 1 when refused (a saga that never waits for
    it, has finished, or a payload its wait does not take; the reason is printed), 3 when no
    saga has this id or key."""
    body = cs.parse_json("--payload", payload)
    if not isinstance(body, dict):
        _fail(EXIT_BAD_INPUT, "error: --payload must be a JSON object, e.g. '{\"approved\": true}'")
    sent = _Signal(
        ident=saga,
        saga=saga_name,
        name=name,
        signal_id=signal_id or str(uuid.uuid4()),
        payload=body,
        who=who or getpass.getuser(),
    )
    done = _over_api(sent, url, token) if url else _on_database(sent)
    if done.result == "refused":
        code = EXIT_NOT_FOUND if done.reason == _UNKNOWN_SAGA else EXIT_REFUSED
        prefix = "error" if code == EXIT_NOT_FOUND else "refused"
        _fail(code, f"{prefix}: {done.why} (reason {done.reason}; signal id {sent.signal_id})")
    said = {
        "taken": f"taken; the saga is {done.status}",
        "held": f"held: taken when its wait begins; the saga is {done.status}",
        "duplicate": "was held or taken already: nothing changed",
    }[done.result]
    typer.echo(f"{done.saga_id}: signal {name} (id {sent.signal_id}) {said}")


@dataclass(frozen=True)
class _Signal:
    ident: str  # the saga's id, or its start key
    saga: str | None  # the saga's name, if given
    name: str
    signal_id: str
    payload: dict[str, Any]
    who: str


@dataclass(frozen=True)
class _Outcome:
    """What became of the signal, from the engine or the API alike."""

    result: str
    saga_id: str = ""
    status: str = ""
    reason: str | None = None
    why: str | None = None


def _on_database(sent: _Signal) -> _Outcome:
    from pydantic import ValidationError

    from orchestrator.messages import SignalSaga
    from orchestrator.signalling import SignalOutcome

    try:
        target: dict[str, Any] = {"saga_id": uuid.UUID(sent.ident)}
    except ValueError:
        target = {"key": sent.ident}
    try:
        request = SignalSaga(
            **target,
            saga=sent.saga,
            signal=sent.name,
            signal_id=sent.signal_id,
            payload=sent.payload,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        _fail(EXIT_BAD_INPUT, f"error: {problems}")

    async def send(engine: Any) -> SignalOutcome:
        outcome: SignalOutcome = await engine.signal(request, actor=f"operator:{sent.who}")
        return outcome

    done = cs.run(cs.with_engine(cs.settings(), send))
    return _Outcome(
        done.result,
        saga_id=str(done.saga_id),
        status="" if done.status is None else done.status.value,
        reason=done.reason,
        why=done.why,
    )


def _over_api(sent: _Signal, url: str, token: str | None) -> _Outcome:
    name = quote(sent.name, safe="")
    try:
        path = f"/api/sagas/{uuid.UUID(sent.ident)}/signals/{name}"
    except ValueError:
        path = f"/api/sagas/by-key/{quote(sent.ident, safe='')}/signals/{name}"
    with ApiClient(url, token) as api:
        answer = api.request(
            "POST",
            path,
            json={"payload": sent.payload, "signal_id": sent.signal_id, "who": sent.who},
            params={"saga": sent.saga} if sent.saga else None,
        )
        body = _json(answer)
        if answer.is_success:
            return _Outcome(body["result"], saga_id=body["saga_id"], status=body["status"])
        if "reason" not in body:  # no refusal: a bad request, a token, an outage
            api.fail(answer)
    return _Outcome("refused", reason=str(body["reason"]), why=str(body.get("detail", "")))


def _json(answer: Any) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _fail(code: int, message: str) -> NoReturn:
    typer.secho(message, fg="red" if code != EXIT_REFUSED else "yellow", err=True)
    raise typer.Exit(code)
