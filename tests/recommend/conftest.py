from tests.audit.conftest import audit_key, pg_url, sqlite_url

__all__ = ["audit_key", "pg_url", "sqlite_url"]
