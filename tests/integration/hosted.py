"""Helpers for integration tests that bring participants of their own instead of the shop."""

from __future__ import annotations

from typing import Any

from adapters import metrics
from adapters.clock import utcnow
from adapters.participant import Participant
from adapters.participant.worker import ParticipantWorker
from adapters.rabbitmq.connection import open_channel
from orchestrator.ports import Clock, HistoryRecord
from tests.integration.harness import System


async def host(system: System, participant: Participant, clock: Clock = utcnow) -> None:
    """Run `participant` on the system's broker until the system stops."""
    channel = await open_channel(system.connection)
    worker = ParticipantWorker(participant, channel, system.topology, clock=clock, prefetch=10)
    await worker.start()
    system.workers[participant.service] = worker


def events(history: list[HistoryRecord]) -> list[tuple[str, str | None]]:
    return [(h.event, h.step) for h in history]


def ignored(history: list[HistoryRecord]) -> list[tuple[str, str]]:
    """(reason, command_id) of every reply the saga recorded as ignored."""
    return [
        (str(h.detail["reason"]), str(h.detail["command_id"]))
        for h in history
        if h.event == "reply_ignored" and h.detail is not None
    ]


def dispatched(history: list[HistoryRecord], step: str) -> dict[int, str]:
    """attempt -> command_id of the step's action commands."""
    return {
        int(h.detail["attempt"]): str(h.detail["command_id"])
        for h in history
        if h.event == "step_dispatched" and h.step == step and h.detail is not None
    }


class Meter:
    """Counter increments since it was made: the registry lives as long as the test process."""

    def __init__(self) -> None:
        self.start = _read()

    def delta(self, counter: str) -> dict[str, float]:
        """label value -> increment, for a one-label counter; increments of 0 left out."""
        now = _read()
        return {
            label: value - self.start.get((counter, label), 0.0)
            for (name, label), value in now.items()
            if name == counter and value != self.start.get((counter, label), 0.0)
        }


def _read() -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and len(sample.labels) == 1:
                [label] = sample.labels.values()
                out[(sample.name, label)] = sample.value
    return out


def detail(record: HistoryRecord) -> dict[str, Any]:
    return dict(record.detail or {})
