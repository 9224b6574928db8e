"""Control-plane refusals, each with the HTTP status the API answers with."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from egressguard.errors import Denied, EgressguardError, InputError


class ControlError(EgressguardError):
    status = 400
    code = "BadRequest"

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["target"] = self.field
        return {"error": error}


class InvalidInput(ControlError, InputError):
    """Input that does not validate; `problems` are (field, reason) pairs."""

    status = 422
    code = "InvalidInput"

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        text = "; ".join(f"{f}: {r}" if f else r for f, r in problems)
        super().__init__(text, problems[0][0] if problems else "")

    def body(self) -> dict[str, Any]:
        out = super().body()
        out["error"]["details"] = [{"target": f, "message": r} for f, r in self.problems]
        return out


class Refused(ControlError, Denied):
    """A valid request the cluster's state does not permit (e.g. `.alter` while
    restricted)."""

    status = 409
    code = "Refused"


class Forbidden(ControlError, Denied):
    status = 403
    code = "Forbidden"


def problems_from(exc: ValidationError, prefix: str,
                  rename: Any = lambda key: key) -> list[tuple[str, str]]:
    """(field, reason) pairs from pydantic, with locations rendered as `a.b[0].c`."""
    out = []
    for err in exc.errors():
        path = prefix
        for key in err["loc"]:
            path += f"[{key}]" if isinstance(key, int) else (
                f".{rename(key)}" if path else str(rename(key)))
        reason = err["msg"].removeprefix("Value error, ")
        out.append((path, reason))
    return out
