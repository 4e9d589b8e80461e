"""One error hierarchy for tcm, mapped to JSON-RPC codes here and nowhere else.

    TcmError                      (-32603 internal)
    ├── ProtocolError
    │   ├── ParseError            (-32700) bytes that are not JSON
    │   ├── InvalidRequest        (-32600) JSON that is not a JSON-RPC request; frame too big
    │   └── MethodNotFound        (-32601)
    ├── InvalidParams             (-32602) message names the offending field
    ├── NotFound                  (-32001) unknown instance / job / run id
    ├── Forbidden                 (-32002) the caller's role may not do this
    ├── Conflict                  (-32003) the target's state refuses the call
    ├── Capacity                  (-32004) a limit is reached
    ├── Unavailable               (-32005) a dependency (tmux, Redis, the daemon) does not answer
    │   └── Stopping              (-32005) tcmd is stopping: a long poll answered at once
    └── ConfigError               invalid settings; the daemon exits 2 naming the variable

This module is imported by the thin clients: it must stay stdlib-only.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TcmError(Exception):
    """Root of every error tcm raises on purpose; carries a JSON-RPC code and data."""

    code: ClassVar[int] = -32603

    def __init__(self, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class ProtocolError(TcmError):
    """The bytes or the envelope were wrong, before any method ran."""


class ParseError(ProtocolError):
    code = -32700


class InvalidRequest(ProtocolError):
    code = -32600


class MethodNotFound(ProtocolError):
    code = -32601


class InvalidParams(TcmError):
    code = -32602


class NotFound(TcmError):
    code = -32001


class Forbidden(TcmError):
    code = -32002


class Conflict(TcmError):
    code = -32003


class Capacity(TcmError):
    code = -32004


class Unavailable(TcmError):
    code = -32005


class Stopping(Unavailable):
    """tcmd is shutting down: a call that waits for news (``events`` follow, ``wait``) is
    answered with this at once instead of holding the stop up. Try again on the next
    daemon. On the wire: -32005 with ``data.reason == "stopping"``."""

    REASON: ClassVar[str] = "stopping"

    def __init__(self, message: str = "tcmd is stopping", *, data: dict[str, Any] | None = None):
        super().__init__(message, data={"reason": self.REASON, **(data or {})})


class ConfigError(TcmError):
    """A setting is invalid. ``variable`` names it (env var spelling)."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}", data={"variable": variable})
        self.variable = variable


_BY_CODE: dict[int, type[TcmError]] = {
    cls.code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        NotFound,
        Forbidden,
        Conflict,
        Capacity,
        Unavailable,
    )
}


def from_json(err: dict[str, Any]) -> TcmError:
    """Rebuild the typed error a daemon sent (client side)."""
    code = err.get("code", TcmError.code)
    cls = _BY_CODE.get(code, TcmError)
    data = err.get("data")
    if cls is Unavailable and isinstance(data, dict) and data.get("reason") == Stopping.REASON:
        return Stopping(str(err.get("message", "tcmd is stopping")), data=data)
    exc = cls(str(err.get("message", "error")), data=data)
    if cls is TcmError:
        exc.code = code  # type: ignore[misc]  # keep an unknown code as sent
    return exc
