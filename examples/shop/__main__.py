"""Run the example shop's participant services: `python -m examples.shop`; `--services` hosts
a subset (`--services customers,payments,notifications` leaves `commands.inventory` to the
shop's Node.js inventory service, examples/node-inventory).

Environment: SHOP_DATABASE_URL (the shop's own database), SHOP_SLOW_SECONDS and
SHOP_LONG_SECONDS (the `slow-` and `long-` orders' stall, examples/shop/services.py), the engine's
SAGA_AMQP_URL / SAGA_AMQP_PREFIX for the broker, and SAGA_FAULT=after_handler_before_reply[@N]
for crash tests (`serve` arms it: see adapters/faults.py).
"""

from __future__ import annotations

import argparse
import os

from adapters import eventloop
from adapters.logging import configure_logging
from adapters.participant.serve import serve
from adapters.postgres.database import ensure_database, make_engine
from adapters.settings import Settings
from adapters.startup import patiently
from examples.shop import schema
from examples.shop.services import Knobs, build

DEFAULT_SHOP_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/saga_shop"


async def main(services: set[str] | None) -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    url = os.environ.get("SHOP_DATABASE_URL", DEFAULT_SHOP_URL)
    patience = settings.startup_patience
    await patiently("PostgreSQL", lambda: ensure_database(url), patience=patience)
    engine = make_engine(url, pool_size=settings.db_pool_size, max_overflow=0)
    # Before serving: the first command needs the tables and the barrier (Barrier.install).
    await patiently("PostgreSQL", lambda: schema.create(engine), patience=patience)
    knobs = Knobs(
        slow_seconds=float(os.environ.get("SHOP_SLOW_SECONDS", "2.0")),
        long_seconds=float(os.environ.get("SHOP_LONG_SECONDS", "10.0")),
    )
    participants = [p for p in build(engine, knobs) if services is None or p.service in services]
    try:
        # Commands expire by the clock of the database the barrier is in, not this host's.
        await serve(settings, participants, clock_database=engine)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", help="comma-separated subset, e.g. customers,inventory")
    args = parser.parse_args()
    eventloop.run(main(set(args.services.split(",")) if args.services else None))
