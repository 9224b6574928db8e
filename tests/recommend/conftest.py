from tests.audit.conftest import audit_key

__all__ = ["audit_key"]
