"""The participant SDK: what a service that takes saga commands imports. It needs the wire
protocol (`orchestrator.messages`) and nothing of the engine (CI checks it: pyproject.toml,
`[tool.importlinter]`).

- here (from `core`): `Participant`, `StepFailed`, `heartbeat`, `report_progress` — handlers
  in, replies out, no broker;
- `adapters.participant.barrier`: `Barrier`, a handler's effect and its outcome written in the
  service's own PostgreSQL transaction, so a redelivered command is answered, not redone;
- `adapters.participant.worker`: `ParticipantWorker`, one participant hosted on RabbitMQ;
- `adapters.participant.serve`: `serve(settings, participants)`, a process until SIGTERM.
"""

from adapters.participant.core import (
    CommandHandler,
    Participant,
    StepFailed,
    heartbeat,
    report_progress,
)

__all__ = ["CommandHandler", "Participant", "StepFailed", "heartbeat", "report_progress"]
