"""Wire protocol v1 as data (docs/protocol/): the committed files are what the code generates,
the schemas agree with the models on what is a valid message and with the prose spec's
examples, and the AsyncAPI document names the topology the code declares."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from adapters.protocol import ASYNCAPI, SCHEMA_SUFFIX, documents, write
from adapters.rabbitmq.topology import COMMAND_QUEUE_PREFIX, EXCHANGE_TYPES, Topology
from orchestrator.messages import CancelSaga, Reply, StartSaga
from tests.fixtures.must_run import unavailable
from tests.fixtures.wire_schemas import PROTOCOL, body_errors

ROOT = Path(__file__).parents[2]
REFRESH = "regenerate them with `.venv/bin/saga protocol` (writes docs/protocol/) and commit them"
# The AsyncAPI 3.0 JSON Schema, as the npm package @asyncapi/specs ships it (a dev dependency of
# examples/node-inventory, installed by deploy/setup-local.sh where node is present).
ASYNCAPI_SPEC = (
    ROOT / "examples/node-inventory/node_modules/@asyncapi/specs/schemas/3.0.0-without-$id.json"
)


def test_the_committed_files_are_the_generated_ones() -> None:
    generated = documents()
    committed = {p.name for p in PROTOCOL.glob("*.json")}
    assert committed == set(generated), f"docs/protocol/ lists other files: {REFRESH}"
    for name, content in generated.items():
        on_disk = json.loads((PROTOCOL / name).read_text("utf-8"))
        assert on_disk == content, f"docs/protocol/{name} is out of date with the code: {REFRESH}"


def test_write_replaces_stale_schema_files(tmp_path: Path) -> None:
    (tmp_path / f"renamed{SCHEMA_SUFFIX}").write_text("{}")
    (tmp_path / "notes.txt").write_text("kept")
    written = write(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in written} | {"notes.txt"}


@pytest.mark.parametrize("name", sorted(n for n in documents() if n.endswith(SCHEMA_SUFFIX)))
def test_every_schema_is_a_valid_json_schema(name: str) -> None:
    schema = documents()[name]
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


SAGA_ID = str(uuid.uuid4())
# (schema, model, body): the model and the schema must both accept or both refuse it.
AGREEMENT: list[tuple[str, type[BaseModel], dict[str, Any]]] = [
    ("start.schema.json", StartSaga, {"saga": "order", "key": "k", "input": {}}),
    ("start.schema.json", StartSaga, {"saga": "order", "key": "k", "input": {}, "extra": 1}),
    ("start.schema.json", StartSaga, {"saga": "order", "key": "", "input": {}}),
    ("start.schema.json", StartSaga, {"saga": "order", "key": "k", "input": [], "version": 2}),
    ("start.schema.json", StartSaga, {"saga": "order", "key": "k", "input": {}, "version": 0}),
    ("cancel.schema.json", CancelSaga, {"key": "k"}),
    ("cancel.schema.json", CancelSaga, {"saga_id": SAGA_ID, "reason": "r"}),
    ("cancel.schema.json", CancelSaga, {"key": "k", "saga_id": None}),
    ("cancel.schema.json", CancelSaga, {"key": "k", "saga_id": SAGA_ID}),
    ("cancel.schema.json", CancelSaga, {"reason": "no target"}),
    ("cancel.schema.json", CancelSaga, {"key": None, "saga_id": None}),
    ("reply.schema.json", Reply, {"command_id": SAGA_ID, "saga_id": SAGA_ID, "step": "s",
                                  "outcome": "success", "result": {"a": 1}, "newer": True}),
    ("reply.schema.json", Reply, {"command_id": SAGA_ID, "saga_id": SAGA_ID, "step": "s",
                                  "outcome": "failure", "error": {"type": "x" * 201}}),
    ("reply.schema.json", Reply, {"command_id": SAGA_ID, "saga_id": SAGA_ID, "step": "s",
                                  "outcome": "done"}),
    ("reply.schema.json", Reply, {"command_id": "nope", "saga_id": SAGA_ID, "step": "s",
                                  "outcome": "heartbeat"}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "model", "body"), AGREEMENT)
def test_the_schema_and_the_model_agree(
    name: str, model: type[BaseModel], body: dict[str, Any]
) -> None:
    try:
        model.model_validate(body)
        model_ok = True
    except ValidationError:
        model_ok = False
    assert (body_errors(name, body) == []) == model_ok


def _spec_examples() -> list[dict[str, Any]]:
    text = (ROOT / "docs" / "protocol-idempotency.md").read_text("utf-8")
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)]
    return [b for b in blocks if "event" not in b]  # a history entry, not a message


def _schema_of(example: dict[str, Any]) -> str:
    if "idempotency_key" in example:
        return "command.schema.json"
    if "outcome" in example:
        return "heartbeat.schema.json" if example["outcome"] == "heartbeat" else "reply.schema.json"
    if "status" in example:
        rejected = example["status"] == "rejected"
        return "rejected-event.schema.json" if rejected else "outcome-event.schema.json"
    return "start.schema.json" if "input" in example else "cancel.schema.json"


def test_the_prose_specs_examples_match_the_schemas() -> None:
    examples = _spec_examples()
    named = {_schema_of(e) for e in examples}
    assert {"command.schema.json", "reply.schema.json", "heartbeat.schema.json"} <= named
    assert {"start.schema.json", "cancel.schema.json", "rejected-event.schema.json"} <= named
    for example in examples:
        assert body_errors(_schema_of(example), example) == [], example


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def _resolve(document: dict[str, Any], pointer: str) -> Any:
    node: Any = document
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_asyncapi_document_names_the_topology_and_every_schema() -> None:
    files = documents()
    document = files[ASYNCAPI]
    assert document["asyncapi"] == "3.0.0"
    refs = _refs(document)
    for ref in refs:
        if ref.startswith("#/"):
            _resolve(document, ref)  # raises KeyError if it points nowhere
        else:
            assert ref in files, ref
    schemas = {n for n in files if n.endswith(SCHEMA_SUFFIX)}
    assert schemas <= set(refs), "a schema no message refers to"

    channels = document["channels"].values()
    exchanges = {
        c["bindings"]["amqp"]["exchange"]["name"]: c["bindings"]["amqp"]["exchange"]["type"]
        for c in channels
        if c["bindings"]["amqp"]["is"] == "routingKey"
    }
    assert exchanges == {name: kind.value for name, kind in EXCHANGE_TYPES.items()}
    queues = [c for c in channels if c["bindings"]["amqp"]["is"] == "queue"]
    assert {q["address"] for q in queues} == {
        "saga.requests",
        "saga.cancels",
        "saga.replies",
        "saga.dead",
        COMMAND_QUEUE_PREFIX + "{service}",
    }
    for q in queues:
        name = q["address"].replace("{service}", "inventory")
        assert q["x-amqp-arguments"] == Topology().queue_arguments(name)

    operations = document["operations"]
    assert {(o["action"], o["channel"]["$ref"]) for o in operations.values()} == {
        ("receive", "#/channels/requestsQueue"),
        ("receive", "#/channels/cancelsQueue"),
        ("send", "#/channels/commands"),
        ("receive", "#/channels/replies"),
        ("send", "#/channels/events"),
        ("send", "#/channels/deadLetters"),
    }
    command = document["components"]["schemas"]["commandHeaders"]
    assert {"message_id", "reply_to", "content_type", "traceparent"} <= set(command["properties"])


def test_the_asyncapi_document_is_valid_asyncapi_3() -> None:
    if not ASYNCAPI_SPEC.exists():
        unavailable(
            "the AsyncAPI 3.0 JSON Schema comes with examples/node-inventory's npm packages: "
            "run `npm ci` there (deploy/setup-local.sh does where node is installed)"
        )
    spec = json.loads(ASYNCAPI_SPEC.read_text("utf-8"))
    errors = jsonschema.Draft7Validator(spec).iter_errors(documents()[ASYNCAPI])
    assert [e.message[:300] for e in errors] == []
