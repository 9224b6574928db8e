from tests.store.fixtures import (
    pg_available,
    pg_url,
    sqlite_store,
    sqlite_url,
    store,
    store_url,
)

__all__ = ["pg_available", "pg_url", "sqlite_store", "sqlite_url", "store", "store_url"]
