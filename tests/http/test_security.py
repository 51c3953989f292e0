"""Bearer tokens and roles, tokens kept out of responses and logs, the body size cap, CORS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest
from structlog.testing import capture_logs

from adapters.http.auth import Tokens
from tests.http.conftest import OPERATOR, READER, TOKENS, Api, assert_problem, order_input


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def secured(make_api: Any) -> Api:
    api: Api = await make_api(api_tokens=TOKENS)
    return api


def start_body(key: str) -> dict[str, Any]:
    return {"saga": "order", "key": key, "input": order_input(key)}


async def test_no_token_is_401(secured: Api) -> None:
    for answer in (
        await secured.client.get("/api/sagas"),
        await secured.client.get(f"/api/sagas/{uuid4()}"),
        await secured.client.post("/api/sagas", json=start_body("a")),
        await secured.client.get("/api/sagas", headers={"Authorization": f"Basic {OPERATOR}"}),
    ):
        assert_problem(answer, 401, says="Authorization: Bearer")
        assert answer.headers["www-authenticate"] == "Bearer"


async def test_an_unknown_token_is_401(secured: Api) -> None:
    for token in ("nope", OPERATOR[:-1], OPERATOR + "x", f"ops:operate:{OPERATOR}"):
        answer = await secured.client.get("/api/sagas", headers=bearer(token))
        assert_problem(answer, 401, says="not one of SAGA_API_TOKENS")


async def test_a_read_token_reads_but_may_not_write(secured: Api) -> None:
    assert (await secured.client.get("/api/sagas", headers=bearer(READER))).status_code == 200
    counts = await secured.client.get("/api/sagas/counts", headers=bearer(READER))
    assert counts.status_code == 200
    answer = await secured.client.post("/api/sagas", json=start_body("b"), headers=bearer(READER))
    assert_problem(answer, 403, says="token 'viewer' has the read role")
    pause = await secured.client.post(
        f"/api/sagas/{uuid4()}/pause", json={"reason": "x"}, headers=bearer(READER)
    )
    assert_problem(pause, 403)  # refused before anything is looked up
    assert secured.publisher.published == []


async def test_an_operate_token_writes_and_is_named_in_history(secured: Api) -> None:
    started = await secured.client.post(
        "/api/sagas", json=start_body("c"), headers=bearer(OPERATOR)
    )
    assert started.status_code == 201
    saga_id = started.json()["saga_id"]
    paused = await secured.client.post(
        f"/api/sagas/{saga_id}/pause", json={"reason": "look"}, headers=bearer(OPERATOR)
    )
    assert paused.status_code == 200
    history = await secured.client.get(f"/api/sagas/{saga_id}/history", headers=bearer(OPERATOR))
    actors = {h["event"]: h["actor"] for h in history.json()["items"]}
    assert actors["saga_started"] == "api:ops" and actors["saga_paused"] == "api:ops"


async def test_tokens_appear_in_no_response_and_no_log_line(secured: Api) -> None:
    answers = []
    with capture_logs() as logs:
        for n, token in enumerate((OPERATOR, READER, "wrong-token-1234")):
            headers = bearer(token)
            answers += [
                await secured.client.get("/api/sagas", headers=headers),
                await secured.client.post("/api/sagas", json=start_body(f"k{n}"), headers=headers),
                await secured.client.get(f"/api/sagas/{uuid4()}", headers=headers),
                await secured.client.post(
                    f"/api/sagas/{uuid4()}/cancel", json={"reason": ""}, headers=headers
                ),
            ]
    assert {a.status_code for a in answers} >= {200, 201, 401, 403, 404, 422}
    everything = " ".join(a.text + str(a.headers) for a in answers) + repr(logs)
    assert logs  # the requests were logged ...
    for token in (OPERATOR, READER, "wrong-token-1234"):
        assert token not in everything  # ... but no token was, nor answered
    assert OPERATOR not in repr(Tokens(TOKENS).__dict__)


async def test_an_unexpected_error_is_a_500_problem_logged_without_secrets(
    secured: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: Any) -> Any:
        raise RuntimeError("the store broke")

    monkeypatch.setattr(secured.store, "count_by_status", broken)
    with capture_logs() as logs:
        answer = await secured.client.get("/api/sagas/counts", headers=bearer(OPERATOR))
    assert_problem(answer, 500, says="its log has the details")
    [failed] = [e for e in logs if e["event"] == "http_request_failed"]
    assert "the store broke" in failed["traceback"]
    assert OPERATOR not in repr(logs)


def test_malformed_tokens_are_refused_without_showing_them() -> None:
    for bad in ("just-a-token", "name:admin:abc-secret", ":read:abc-secret", "n:read:"):
        with pytest.raises(ValueError, match="entry 1") as refused:
            Tokens(bad)
        assert "abc-secret" not in str(refused.value)
    with pytest.raises(ValueError, match="'a' twice"):
        Tokens("a:read:x1,a:operate:x2")
    # A token may contain colons; blank entries are skipped.
    tokens = Tokens("a:read:x:y:z, ,b:operate:w")
    assert tokens.identify("x:y:z") is not None and tokens.identify("w") is not None
    assert tokens.identify("x") is None and not Tokens("")


# -- request size ---------------------------------------------------------------------------


async def test_a_body_over_the_cap_is_413_by_its_declared_length(make_api: Any) -> None:
    api: Api = await make_api(http_max_body=2048)
    big = start_body("big") | {"input": order_input("big", note="x" * 4096)}
    assert_problem(await api.client.post("/api/sagas", json=big), 413, says="2048 bytes")
    fits = await api.client.post("/api/sagas", json=start_body("small"))
    assert fits.status_code == 201


async def test_a_body_over_the_cap_is_413_by_its_actual_bytes(make_api: Any) -> None:
    """A chunked body declares no length; one that lies about it is cut off as well."""
    api: Api = await make_api(http_max_body=2048)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"saga": "order", "key": "chunked", "input": {"note": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}}'

    chunked = await api.client.post(
        "/api/sagas", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in chunked.request.headers
    assert_problem(chunked, 413, says="SAGA_HTTP_MAX_BODY")
    lying = await api.client.post(
        "/api/sagas",
        content=b"[" + b"1," * 3000 + b"1]",
        headers={"content-type": "application/json", "content-length": "10"},
    )
    assert_problem(lying, 413)  # counted as it arrived, never parsed whole
    assert api.publisher.published == []


async def test_a_bad_content_length_is_400(api: Api) -> None:
    answer = await api.client.post("/api/sagas", content=b"{}", headers={"content-length": "-5"})
    assert_problem(answer, 400, says="Content-Length")


# -- CORS -------------------------------------------------------------------------------------


async def test_no_cors_headers_by_default(api: Api) -> None:
    preflight = await api.client.options(
        "/api/sagas",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    simple = await api.client.get("/api/sagas", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


async def test_cors_for_configured_origins_only(make_api: Any) -> None:
    api: Api = await make_api(http_cors_origins=["https://ops.example"])
    ok = await api.client.get("/api/sagas", headers={"Origin": "https://ops.example"})
    assert ok.headers["access-control-allow-origin"] == "https://ops.example"
    preflight = await api.client.options(
        "/api/sagas",
        headers={
            "Origin": "https://ops.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    other = await api.client.get("/api/sagas", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
