"""Prometheus metrics of this process, in a registry of their own.

Not the library's global default registry: tests read exact values from `REGISTRY` without
the process, platform and GC collectors (or another library's metrics) in the way, and an
HTTP `/metrics` endpoint renders exactly this with `render()`.

The engine knows nothing of Prometheus: it reports what happened through its `observe`
callback (orchestrator.unit_of_work.Observer) and `observe` below turns that into counts and step
latencies. The consumers report dead-lettered messages through `dead_lettered`, the command
queue check (adapters/rabbitmq/command_queues.py) what it counted through
`command_queue_consumers`; `saga run` points `CLOCK_OFFSET` at its database clock's offset.

What only the database knows (sagas by status, outbox lag, due timers, ...) is read at scrape
time: `await refresh_gauges(engine)` and then `render()` (adapters/http/observability.py).
Every process counts its own events; sum them across processes. The database gauges are the
same whichever process reports them: aggregate those with max, not sum.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.postgres import gauges
from adapters.postgres.gauges import LIVE_STATUSES, DatabaseGauges
from orchestrator.event_names import HistoryEvent

log = structlog.get_logger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

REPLIES_IGNORED = Counter(
    "saga_replies_ignored",
    "Replies acknowledged without being applied, by reason: duplicate, stale attempt, late, "
    "unknown step (each also in the saga's history), unknown saga (no history possible).",
    ["reason"],
    registry=REGISTRY,
)
MESSAGES_DEAD_LETTERED = Counter(
    "saga_messages_dead_lettered",
    "Messages this process moved to the dead queue as unprocessable, by the queue they came "
    "from. Messages the broker dead-letters past the delivery limit are not counted here: "
    "watch the dead queue's depth for those.",
    ["queue"],
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "saga_transitions",
    "Saga history events committed, by event (step_dispatched, saga_completed, "
    "reply_ignored, cancel_ignored, ...); reply_ignored for an unknown saga counts too, and "
    "saga_start_invalid (a start dead-lettered and announced as <saga>.rejected).",
    ["event"],
    registry=REGISTRY,
)
STARTS_DEDUPLICATED = Counter(
    "saga_starts_deduplicated",
    "Start requests whose (saga, key) had started a saga already: acknowledged, nothing started.",
    ["saga"],
    registry=REGISTRY,
)

LOCKED_STARTS = Counter(
    "saga_starts_locked",
    "Starts a held semantic lock kept from starting at once, by saga and outcome: rejected, "
    "queued, or lock_wait_expired (a queued start whose wait ran out).",
    ["saga", "outcome"],
    registry=REGISTRY,
)

STEP_SECONDS = Histogram(
    "saga_step_seconds",
    "How long a step's command took, from sending it to the reply that settled it, by saga, "
    "step (a map step's items under the map step's name) and kind: action or compensation. "
    "Successes only: a failure or timeout is counted by saga_transitions_total.",
    ["saga", "step", "kind"],
    # From a fast local step to a participant that works for an hour.
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
)
RETRIES = Counter(
    "saga_retries_scheduled",
    "Failed attempts that will be tried again after a backoff, by saga and kind: action "
    "(step_retry_scheduled) or compensation (compensation_retry_scheduled).",
    ["saga", "kind"],
    registry=REGISTRY,
)
COMPENSATIONS = Counter(
    "saga_steps_compensated",
    "Steps undone by their compensation, by saga.",
    ["saga"],
    registry=REGISTRY,
)
STARTED = Counter(
    "saga_instances_started",
    "Sagas started, by saga.",
    ["saga"],
    registry=REGISTRY,
)
FINISHED = Counter(
    "saga_instances_finished",
    "Sagas that ended, by saga and status: completed, compensated, cancelled, or failed "
    "(parked for an operator; one that is moved on and ends later is counted again).",
    ["saga", "status"],
    registry=REGISTRY,
)
SIGNALS_RECEIVED = Counter(
    "saga_signals_received",
    "Signals a saga took, by saga, signal and result: taken (its wait step was waiting; the "
    "payload is the step's result) or held (it came before the wait began, which takes it "
    "then). A duplicate signal id counts nowhere; refusals: saga_signals_refused_total.",
    ["saga", "signal", "result"],
    registry=REGISTRY,
)
SIGNALS_REFUSED = Counter(
    "saga_signals_refused",
    "Signals refused, by saga ('' when no single saga was found), signal and reason: "
    "unknown_saga, ambiguous_key, not_waited_for, finished, invalid_payload, wait_over, "
    "compensating. Each is announced as <saga>.signal_refused.",
    ["saga", "signal", "reason"],
    registry=REGISTRY,
)
WAIT_SECONDS = Histogram(
    "saga_wait_seconds",
    "How long a wait step waited for its signal, by saga, signal and outcome: signalled "
    "(0 for a signal held before the wait began) or timed_out.",
    ["saga", "signal", "outcome"],
    # From a webhook that answers at once to a person who answers within a week.
    buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400),
    registry=REGISTRY,
)
STARTS_HELD = Gauge(
    "saga_starts_held",
    "Start messages this process holds unacked, waiting until fewer than SAGA_MAX_ACTIVE "
    "sagas are running or compensating (admission control); more wait in saga.requests.",
    registry=REGISTRY,
)
CLOCK_OFFSET = Gauge(
    "saga_clock_offset_seconds",
    "This host's wall clock minus the database's, in seconds, as measured at the last sync "
    "(every 30 s; positive: the host runs ahead). Deadlines and timers go by the database's "
    "clock; beyond SAGA_CLOCK_SKEW_MAX /readyz answers 503 (adapters/postgres/dbclock.py).",
    registry=REGISTRY,
)
COMMAND_QUEUE_CONSUMERS = Gauge(
    "saga_command_queue_consumers",
    "Consumers of each command queue the loaded sagas send to, as this process last counted "
    "them (every SAGA_CONSUMER_CHECK_INTERVAL). 0: the queue's commands only wait for their "
    "timeouts; its participant is not running, or a command names a misspelled service.",
    ["queue"],
    registry=REGISTRY,
)

# Starts whose key had a saga: counted apart, not as a transition.
_NO_HISTORY = HistoryEvent.SAGA_START_DUPLICATE
# Starts that found a resource held: no saga (yet), so no history either; by outcome label.
_LOCKED = {
    HistoryEvent.SAGA_START_REJECTED: "rejected",
    HistoryEvent.SAGA_START_QUEUED: "queued",
    HistoryEvent.LOCK_WAIT_EXPIRED: "lock_wait_expired",
}
# Replies that settle an attempt, and so time it; by kind label.
_LATENCY = {
    HistoryEvent.STEP_SUCCEEDED: "action",
    HistoryEvent.STEP_COMPENSATED: "compensation",
}
# Failed attempts tried again after a wait; by kind label.
_RETRIES = {
    HistoryEvent.STEP_RETRY_SCHEDULED: "action",
    HistoryEvent.COMPENSATION_RETRY_SCHEDULED: "compensation",
}
# A saga's end; by status label.
_FINISHED = {
    HistoryEvent.SAGA_COMPLETED: "completed",
    HistoryEvent.SAGA_COMPENSATED: "compensated",
    HistoryEvent.SAGA_CANCELLED: "cancelled",
    HistoryEvent.SAGA_FAILED: "failed",
}
# A wait's end: its signal came, or its timeout passed; by outcome label.
_WAITED = {
    HistoryEvent.WAIT_FINISHED: "signalled",
    HistoryEvent.WAIT_TIMED_OUT: "timed_out",
}
_ITEM = re.compile(r"\[\d+\]$")


def observe(event: HistoryEvent, detail: Mapping[str, Any]) -> None:
    """The engine's observer (orchestrator.unit_of_work.Observer)."""
    if event == _NO_HISTORY:
        STARTS_DEDUPLICATED.labels(saga=str(detail.get("saga", ""))).inc()
        return
    if event in _LOCKED:
        LOCKED_STARTS.labels(saga=str(detail.get("saga", "")), outcome=_LOCKED[event]).inc()
        return
    TRANSITIONS.labels(event=event).inc()
    saga = str(detail.get("saga", ""))
    if event == HistoryEvent.REPLY_IGNORED:
        REPLIES_IGNORED.labels(reason=str(detail.get("reason", ""))).inc()
    elif event in _LATENCY:
        seconds = detail.get("seconds")
        # None when the step was sent by a version that did not record when.
        if isinstance(seconds, int | float):
            STEP_SECONDS.labels(
                saga=saga, step=step_label(detail.get("step")), kind=_LATENCY[event]
            ).observe(max(0.0, float(seconds)))
        if event == HistoryEvent.STEP_COMPENSATED:
            COMPENSATIONS.labels(saga=saga).inc()
    elif event in _RETRIES:
        RETRIES.labels(saga=saga, kind=_RETRIES[event]).inc()
    elif event == HistoryEvent.SAGA_STARTED:
        STARTED.labels(saga=saga).inc()
    elif event in _FINISHED:
        FINISHED.labels(saga=saga, status=_FINISHED[event]).inc()
    elif event in _WAITED or event in (HistoryEvent.SIGNAL_HELD, HistoryEvent.SIGNAL_REFUSED):
        _signal(event, detail)


def _signal(event: HistoryEvent, detail: Mapping[str, Any]) -> None:
    """A signal held, taken or refused, and a wait's end. A wait step is named after its
    signal; a refusal names the signal (and no saga when none was found)."""
    saga = str(detail.get("saga") or "")
    signal = str(detail.get("signal") or detail.get("step") or "")
    if event == HistoryEvent.SIGNAL_REFUSED:
        reason = str(detail.get("reason", ""))
        SIGNALS_REFUSED.labels(saga=saga, signal=signal, reason=reason).inc()
        return
    if event == HistoryEvent.SIGNAL_HELD:
        SIGNALS_RECEIVED.labels(saga=saga, signal=signal, result="held").inc()
        return
    if event == HistoryEvent.WAIT_FINISHED and not detail.get("held"):
        # A held signal was counted when it came: taking it now is no second receipt.
        SIGNALS_RECEIVED.labels(saga=saga, signal=signal, result="taken").inc()
    seconds = detail.get("seconds")
    if isinstance(seconds, int | float):
        WAIT_SECONDS.labels(saga=saga, signal=signal, outcome=_WAITED[event]).observe(
            max(0.0, float(seconds))
        )


def step_label(step: object) -> str:
    """A step's name as a label: a map step's items (`ship[3]`) count as the map step, so
    the number of series stays the number of steps however many items a map has."""
    return _ITEM.sub("", str(step or ""))


def dead_lettered(queue: str) -> None:
    MESSAGES_DEAD_LETTERED.labels(queue=queue).inc()


def command_queue_consumers(queue: str, consumers: int) -> None:
    COMMAND_QUEUE_CONSUMERS.labels(queue=queue).set(consumers)


def value(name: str, **labels: str) -> float:
    """A sample's current value, 0 when it was never incremented (for tests and the CLI)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def render() -> bytes:
    """The text exposition format, for a `/metrics` endpoint."""
    return generate_latest(REGISTRY)


# -- the broker's flow control, read at scrape time ----------------------------------------


class Blocking(Protocol):
    """What adapters/rabbitmq/blocking.py's BlockedWatch tells."""

    @property
    def blocked(self) -> bool: ...

    def blocked_seconds(self) -> float: ...


class AmqpBlockedCollector:
    """`saga_amqp_blocked` (0/1) and `saga_amqp_blocked_seconds_total` of the connection
    `saga run` publishes on, as its watch tells them at scrape time: a counter that grows
    while the block lasts, not only once it ends. Nothing before a watch is set (a process
    that does not publish commands, such as `saga worker`)."""

    def __init__(self) -> None:
        self._watch: Callable[[], Blocking | None] = lambda: None

    def watch(self, watch: Blocking) -> None:
        """Report `watch` from now on (the latest orchestrator started in the process)."""
        self._watch = lambda: watch

    def describe(self) -> Iterable[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._watch()))

    def _families(self, watch: Blocking | None) -> Iterable[Metric]:
        blocked = GaugeMetricFamily(
            "saga_amqp_blocked",
            "1 while RabbitMQ blocks this orchestrator's connection (a memory or disk alarm: "
            "nothing it publishes goes out, /readyz answers 503 naming the alarm), else 0.",
        )
        seconds = CounterMetricFamily(
            "saga_amqp_blocked_seconds",
            "Seconds RabbitMQ has blocked this orchestrator's connection since it started, the "
            "block going on now included.",
        )
        if watch is not None:
            blocked.add_metric([], 1.0 if watch.blocked else 0.0)
            seconds.add_metric([], watch.blocked_seconds())
        yield blocked
        yield seconds


AMQP_BLOCKED = AmqpBlockedCollector()
REGISTRY.register(AMQP_BLOCKED)


# -- read from the database at scrape time ------------------------------------------------


class DatabaseCollector:
    """Reports the latest database reading (adapters/postgres/gauges.py) as gauges.

    A collector, not Gauge objects: a reading replaces the last one whole, so a saga whose
    sagas all finished shows 0 instead of keeping its old count. Collecting is synchronous
    and the engine is async, so the scrape handler reads first (`refresh_gauges`) and this
    only reports. Until a first reading, and after a failed one, it reports only
    `saga_database_up` (0 after a failure): stale values would mislead.
    """

    def __init__(self) -> None:
        self._reading: DatabaseGauges | None = None
        self._read_seconds = 0.0
        self._up: float | None = None
        # Every saga seen: reported with 0 in each status it has no instance in.
        self._sagas: set[str] = set()

    def update(self, reading: DatabaseGauges, read_seconds: float) -> None:
        self._sagas.update(saga for saga, _status in reading.sagas)
        self._reading, self._read_seconds, self._up = reading, read_seconds, 1.0

    def failed(self) -> None:
        self._reading, self._up = None, 0.0

    def describe(self) -> Iterable[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._reading))

    def _families(self, reading: DatabaseGauges | None) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "saga_database_up",
            "1 when this scrape read the gauges below from the database, 0 when it could not.",
        )
        if self._up is not None:
            up.add_metric([], self._up)
        yield up
        sagas = GaugeMetricFamily(
            "saga_instances",
            "Sagas by saga and status, of the statuses a saga is still in: running, "
            "compensating, paused, failed (parked). Finished ones: saga_instances_finished_total.",
            labels=["saga", "status"],
        )
        single = {
            "saga_outbox_messages": "Messages in the outbox: not yet published, or published "
            "since the last relay sweep (deleted in bulk).",
            "saga_outbox_lag_seconds": "Age of the oldest outbox message (0 when empty): how "
            "far publishing is behind.",
            "saga_timers_due": "Sagas whose next timer (a timeout, a retry, a deadline) is due "
            "now: more than a handful for long means no orchestrator is sweeping timers.",
            "saga_oldest_running_age_seconds": "Seconds since the oldest running or "
            "compensating saga started (0 when there is none).",
            "saga_semantic_locks_held": "Resources held by a saga's semantic lock.",
            "saga_semantic_lock_waiters": "Starts waiting for a semantic lock.",
            "saga_database_read_seconds": "How long reading these gauges took.",
        }
        families = {name: GaugeMetricFamily(name, text) for name, text in single.items()}
        if reading is not None:
            for saga in sorted(self._sagas):
                for status in LIVE_STATUSES:
                    count = reading.sagas.get((saga, status.value), 0)
                    sagas.add_metric([saga, status.value], count)
            values = {
                "saga_outbox_messages": reading.outbox_messages,
                "saga_outbox_lag_seconds": reading.outbox_lag_seconds,
                "saga_timers_due": reading.timers_due,
                "saga_oldest_running_age_seconds": reading.oldest_active_saga_seconds,
                "saga_semantic_locks_held": reading.locks_held,
                "saga_semantic_lock_waiters": reading.lock_waiters,
                "saga_database_read_seconds": self._read_seconds,
            }
            for name, value in values.items():
                families[name].add_metric([], value)
        yield sagas
        yield from families.values()


DATABASE = DatabaseCollector()
REGISTRY.register(DATABASE)


async def refresh_gauges(engine: AsyncEngine, *, timeout: float = 5.0) -> bool:
    """Read the database gauges for the next `render()`; False (and `saga_database_up` 0)
    when the database did not answer within `timeout` seconds. Never raises: a scrape must
    still report the counters when the database is down."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            reading = await gauges.read(engine)
    except Exception as exc:
        log.warning("metrics_database_read_failed", error=str(exc)[:200] or type(exc).__name__)
        DATABASE.failed()
        return False
    DATABASE.update(reading, time.perf_counter() - started)
    return True
