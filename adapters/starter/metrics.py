"""The relay's Prometheus metrics, in a registry the caller may pass.

Give the registry your service already exposes (e.g. `prometheus_client.REGISTRY`) to serve
these beside your own metrics; without one the relay keeps a registry of its own
(`RelayMetrics.registry`), which `saga relay --metrics-port` serves. Two relays in one
process need two registries: a registry refuses a metric name twice.

The two gauges are read from the table (every `GAUGE_INTERVAL` at most), so every relay on
one table reports the same values: aggregate them with max, the counters with sum.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

GAUGE_INTERVAL = 1.0


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.waiting = Gauge(
            "saga_starter_rows_waiting",
            "Rows in the starter outbox: starts and cancels written and not yet confirmed by "
            "the broker.",
            registry=self.registry,
        )
        self.oldest_age = Gauge(
            "saga_starter_oldest_row_age_seconds",
            "Age of the oldest row in the starter outbox (0 when empty): how far the relay is "
            "behind, or how long the broker has been out of reach.",
            registry=self.registry,
        )
        self.published = Counter(
            "saga_starter_rows_published",
            "Rows published with the broker's confirm and deleted, by kind: start or cancel.",
            ["kind"],
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "saga_starter_publish_failures",
            "Rows the broker did not confirm at an attempt (unreachable, nacked, unroutable, "
            "timed out): they stay in the table and are tried again after a backoff.",
            registry=self.registry,
        )
        self.database_failures = Counter(
            "saga_starter_database_failures",
            "Relay rounds that failed on the database (unreachable, the table missing): "
            "tried again after a backoff.",
            registry=self.registry,
        )

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value, 0 when it was never set (for tests and checks)."""
        return self.registry.get_sample_value(name, labels) or 0.0
