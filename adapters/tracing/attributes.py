"""The attribute names of the spans saga makes, the orchestrator's and the participant SDK's
(docs/observability.md#spans). `error.type` is OpenTelemetry's own (semantic conventions)."""

SAGA = "saga.name"
SAGA_ID = "saga.id"
KEY = "saga.key"
VERSION = "saga.version"
STEP = "saga.step"
KIND = "saga.kind"  # action or compensation
ATTEMPT = "saga.attempt"
COMMAND = "saga.command"
COMMAND_ID = "saga.command_id"
SERVICE = "saga.service"  # the participant service that handled the command
OUTCOME = "saga.outcome"
TIMEOUT = "saga.timeout"  # which limit ended a timed-out attempt
ERROR_TYPE = "error.type"
