"""The read and act commands over the HTTP API instead of the database: `--url` (or
SAGA_API_URL) and `--token` (or SAGA_API_TOKEN). What the API answers is turned back into the
engine's values (SagaState, HistoryRecord), so a command prints exactly what it prints when it
reads the database (with secrets redacted by the API).

Exit codes: 0 done, 1 refused (409), 2 bad input or not allowed (other 4xx), 3 not found
(404), 4 the API is unreachable or failed (5xx).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import quote
from uuid import UUID

import httpx
import typer

from orchestrator.bulk import BulkReport, Outcome, Refusal
from orchestrator.events import ACTION_NAMES
from orchestrator.machine import OperatorEvent, SkipRequested
from orchestrator.messages import ParentRef
from orchestrator.ports import HistoryRecord
from orchestrator.state import SagaState, SagaStatus, StepState, StepStatus
from orchestrator.waiting import WaitView

EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_FOUND = 3
EXIT_UNREACHABLE = 4

_PAGE = 500  # the API's largest page
# A bulk action's request lasts as long as its batches: thousands of sagas take seconds.
_BULK_TIMEOUT = 600.0


class ApiClient:
    def __init__(self, url: str, token: str | None) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._url = url.rstrip("/")
        self._http = httpx.Client(base_url=self._url, headers=headers, timeout=30.0)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._send("GET", path, params=params)

    def post(
        self, path: str, body: Mapping[str, Any], params: Mapping[str, Any] | None = None
    ) -> Any:
        return self._send("POST", path, json=body, params=params)

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.request(method, path, **kwargs)
        if answer.is_success:
            return answer.json()
        self.fail(answer)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The API's answer, whatever its status; exit 4 when it cannot be reached."""
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            _fail(EXIT_UNREACHABLE, f"cannot reach the API at {self._url}: {exc}")

    def fail(self, answer: httpx.Response) -> NoReturn:
        """Exit with the code and message an error answer calls for."""
        detail = _detail(answer)
        status = answer.status_code
        if status == 409:
            _fail(EXIT_REFUSED, f"refused: {detail}", color="yellow")
        if status == 404:
            _fail(EXIT_NOT_FOUND, detail)
        if status >= 500:
            _fail(EXIT_UNREACHABLE, f"the API at {self._url} failed ({status}): {detail}")
        _fail(EXIT_BAD_INPUT, f"{detail} ({status})")

    # -- what the commands ask ---------------------------------------------------------------

    def saga(self, ident: str) -> SagaState:
        """The saga with this id, or the newest one with this start key."""
        return state_from_api(self.saga_detail(ident))

    def saga_detail(self, ident: str) -> dict[str, Any]:
        """The API's SagaDetail of the saga with this id, or of the newest one with this
        start key."""
        try:
            saga_id = uuid.UUID(ident)
        except ValueError:
            found: list[dict[str, Any]] = self.get(f"/api/sagas/by-key/{ident}")["items"]
            return found[0]
        detail: dict[str, Any] = self.get(f"/api/sagas/{saga_id}")
        return detail

    def sagas(self, params: Mapping[str, Any], limit: int) -> Iterator[dict[str, Any]]:
        """Up to `limit` summaries, page after page."""
        query = {k: v for k, v in params.items() if v is not None}
        cursor = None
        left = limit
        while left > 0:
            page = self.get("/api/sagas", {**query, "limit": min(left, _PAGE)} | _cursor(cursor))
            yield from page["items"]
            left -= len(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def history(self, saga_id: UUID) -> list[HistoryRecord]:
        items = self.get(f"/api/sagas/{saga_id}/history")["items"]
        return [
            HistoryRecord(
                saga_id=saga_id,
                seq=i["seq"],
                at=datetime.fromisoformat(i["at"]),
                event=i["event"],
                step=i["step"],
                detail=i["detail"],
                actor=i["actor"],
            )
            for i in items
        ]

    def cancel(self, saga_id: UUID, reason: str, who: str) -> SagaState:
        return state_from_api(
            self.post(f"/api/sagas/{saga_id}/cancel", {"reason": reason, "who": who})
        )

    def cancel_key(
        self, key: str, reason: str, who: str, *, hold: bool
    ) -> tuple[bool, list[SagaState]]:
        """Cancel the sagas of a start key: whether the cancel was held (`hold`, and no saga
        had the key yet), and the sagas it applied to."""
        done = self.post(
            f"/api/sagas/by-key/{quote(key, safe='')}/cancel",
            {"reason": reason, "who": who},
            {"hold": "true"} if hold else None,
        )
        return done["held"], [state_from_api(s) for s in done["items"]]

    def bulk(self, action: str, body: Mapping[str, Any]) -> BulkReport:
        """`POST /api/bulk/{action}`: one action on every saga `body["filter"]` matches."""
        done = self._send("POST", f"/api/bulk/{action}", json=body, timeout=_BULK_TIMEOUT)
        return BulkReport(
            action=done["action"],
            dry_run=done["dry_run"],
            matched=done["matched"],
            more=done["more"],
            counts={Outcome(o): n for o, n in done["counts"].items()},
            refusals=tuple(
                Refusal(UUID(r["saga_id"]), r["saga"], r["key"], Outcome(r["outcome"]), r["why"])
                for r in done["refusals"]
            ),
            sample=tuple(UUID(i) for i in done["sample"]),
        )

    def operate(self, saga_id: UUID, action: OperatorEvent, who: str) -> SagaState:
        body: dict[str, Any] = {"reason": action.reason, "who": who}
        if isinstance(action, SkipRequested):
            body |= {"step": action.step, "result": action.result}
        path = f"/api/sagas/{saga_id}/{ACTION_NAMES[type(action)]}"
        return state_from_api(self.post(path, body))


def state_from_api(saga: Mapping[str, Any]) -> SagaState:
    """A SagaDetail of the API as the engine's value (what the API does not show, such as
    the revision or command ids, left at its default)."""
    return SagaState(
        saga_id=UUID(saga["saga_id"]),
        name=saga["saga"],
        version=saga["version"],
        key=saga["key"],
        status=SagaStatus(saga["status"]),
        input=saga["input"],
        steps=tuple(
            StepState(
                name=s["name"],
                index=s["index"],
                status=StepStatus(s["status"]),
                attempt=s["attempt"],
                compensation_attempt=s["compensation_attempt"],
                due_at=_time(s["due_at"]),
                result=s["result"],
                error=s["error"],
                started_at=_time(s["started_at"]),
                dispatched_at=_time(s["dispatched_at"]),
                item=s["item"],
                payload=s["payload"],
            )
            for s in saga["steps"]
        ),
        created_at=datetime.fromisoformat(saga["created_at"]),
        updated_at=datetime.fromisoformat(saga["updated_at"]),
        cancel_reason=saga["cancel_reason"],
        error=saga["error"],
        deadline_at=_time(saga["deadline_at"]),
        resume_status=None if saga["resume_status"] is None else SagaStatus(saga["resume_status"]),
        parent=None if saga["parent"] is None else ParentRef.model_validate(saga["parent"]),
        status_since=_time(saga["status_since"]),
        output=saga.get("output"),  # absent from an API older than output=
    )


def waits_from_api(saga: Mapping[str, Any]) -> dict[str, WaitView]:
    """The wait steps of a SagaDetail of the API (none from an API older than waits)."""
    return {
        s["name"]: WaitView(
            signal=w["signal"],
            stage=w["stage"],
            timeout=w["timeout"],
            on_timeout=w["on_timeout"],
            since=_time(w["waiting_since"]),
            until=_time(w["until"]),
            signal_id=w["signal_id"],
            received_at=_time(w["received_at"]),
        )
        for s in saga["steps"]
        if (w := s.get("wait")) is not None
    }


def _cursor(cursor: str | None) -> dict[str, str]:
    return {} if cursor is None else {"cursor": cursor}


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _detail(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text[:300] or answer.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else answer.text[:300]


def _fail(code: int, message: str, color: str = "red") -> NoReturn:
    prefix = "" if message.startswith("refused") else "error: "
    typer.secho(f"{prefix}{message}", fg=color, err=True)
    raise typer.Exit(code)
