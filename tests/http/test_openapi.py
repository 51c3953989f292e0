"""The OpenAPI document: served at /openapi.json (and as a page at /docs), committed as
docs/openapi.json, and kept equal to what the code generates."""

from __future__ import annotations

import json
from pathlib import Path

from adapters.http.app import openapi_document
from tests.http.conftest import Api

COMMITTED = Path(__file__).parents[2] / "docs" / "openapi.json"
PATHS = {
    "/api/sagas": {"get", "post"},
    "/api/sagas/counts": {"get"},
    "/api/sagas/by-key/{key}": {"get"},
    "/api/sagas/by-key/{key}/cancel": {"post"},
    "/api/sagas/by-key/{key}/signals/{name}": {"post"},
    "/api/sagas/{saga_id}/signals/{name}": {"post"},
    "/api/sagas/{saga_id}": {"get"},
    "/api/sagas/{saga_id}/history": {"get"},
    **{
        f"/api/sagas/{{saga_id}}/{action}": {"post"}
        for action in ("cancel", "retry", "pause", "resume", "skip", "mark-compensated")
    },
    **{
        f"/api/bulk/{action}": {"post"}
        for action in ("cancel", "retry", "pause", "resume", "skip", "mark-compensated")
    },
}


PROBLEM = {"$ref": "#/components/schemas/Problem"}
# A signal's refusal is a Problem with `reason` (and the signal); other errors are Problems.
SIGNAL_PROBLEM = {"anyOf": [{"$ref": "#/components/schemas/SignalRefusal"}, PROBLEM]}


def test_the_committed_document_is_the_generated_one() -> None:
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert committed == openapi_document(), (
        "docs/openapi.json is out of date with the code: regenerate it with "
        "`.venv/bin/saga openapi --output docs/openapi.json` and commit it"
    )


def test_every_endpoint_is_described_with_its_errors() -> None:
    document = openapi_document()
    api = {path: ops for path, ops in document["paths"].items() if path.startswith("/api/")}
    assert {path: set(ops) for path, ops in api.items()} == PATHS
    for path, ops in api.items():
        for method, op in ops.items():
            responses = op["responses"]
            assert {"401", "403", "422"} <= set(responses), (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/problem+json"]["schema"]
                    assert schema in (PROBLEM, SIGNAL_PROBLEM), (method, path, status)
            assert op["security"] == [{"HTTPBearer": []}]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_the_app_serves_its_document_and_the_docs_page(api: Api) -> None:
    served = await api.client.get("/openapi.json")
    assert served.json() == openapi_document()
    # The page's scripts and styles come from this server, not a CDN: /docs works offline.
    page = await api.client.get("/docs")
    assert page.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in page.text
    assert "://" not in page.text.split("<body>")[0]
    script = await api.client.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and b"SwaggerUIBundle" in script.content
    assert (await api.client.get("/redoc")).status_code == 200
