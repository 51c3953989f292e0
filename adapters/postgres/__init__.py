"""The PostgreSQL adapter: schema (tables), the SagaStore (store), engines and migrations."""

from adapters.postgres.database import ensure_database, make_engine
from adapters.postgres.store import PostgresStore
from adapters.postgres.transaction import PostgresTransaction

__all__ = ["PostgresStore", "PostgresTransaction", "ensure_database", "make_engine"]
