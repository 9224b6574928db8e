from tests.store.fixtures import sqlite_store, store

__all__ = ["sqlite_store", "store"]
