"""JSON-RPC 2.0 framing shared by tcmd and its clients: one JSON object per line.

Requests may carry a top-level ``"token"`` member (an extension): the instance token of
the calling agent. Without it the caller is the operator. Batches are not supported;
pipeline single requests on one connection instead (ids correlate the answers, which may
arrive in any order).
"""

from __future__ import annotations

from typing import Any

import orjson

from tcmd.errors import InvalidRequest, ParseError, TcmError

MAX_FRAME_BYTES = 4 * 1024 * 1024
JSONRPC = "2.0"

RequestId = str | int | None


class Request:
    """A decoded, envelope-checked request. ``notification`` requests get no answer.

    A plain slotted class, not a dataclass: this module is imported by every client
    process, where start-up time counts.
    """

    __slots__ = ("id", "method", "notification", "params", "token")

    def __init__(
        self,
        method: str,
        params: dict[str, Any],
        req_id: RequestId,
        notification: bool,
        token: str | None,
    ) -> None:
        self.method = method
        self.params = params
        self.id = req_id
        self.notification = notification
        self.token = token


def dumps(obj: Any) -> bytes:
    """One frame: compact JSON and the terminating newline."""
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)


def encode_request(
    method: str, params: dict[str, Any] | None, req_id: RequestId, token: str | None = None
) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": JSONRPC, "method": method}
    if params:
        msg["params"] = params
    if req_id is not None:
        msg["id"] = req_id
    if token:
        msg["token"] = token
    return dumps(msg)


def encode_result(req_id: RequestId, result: Any) -> bytes:
    return dumps({"jsonrpc": JSONRPC, "id": req_id, "result": result})


def encode_error(req_id: RequestId, error: TcmError) -> bytes:
    return dumps({"jsonrpc": JSONRPC, "id": req_id, "error": error.to_json()})


def decode_request(line: bytes) -> Request:
    """Parse and check the envelope of one frame; raise ParseError / InvalidRequest."""
    try:
        msg = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"parse error: {exc}") from None
    if isinstance(msg, list):
        raise InvalidRequest("batch requests are not supported: send one request per line")
    if not isinstance(msg, dict):
        raise InvalidRequest("a request must be a JSON object")
    req_id = msg.get("id")
    if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, str | int)):
        raise InvalidRequest("id: must be a string, an integer or null")
    if msg.get("jsonrpc") != JSONRPC:
        raise _invalid('jsonrpc: must be "2.0"', req_id)
    method = msg.get("method")
    if not isinstance(method, str) or not method:
        raise _invalid("method: must be a non-empty string", req_id)
    params = msg.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _invalid("params: must be an object (named parameters)", req_id)
    token = msg.get("token")
    if token is not None and not isinstance(token, str):
        raise _invalid("token: must be a string", req_id)
    return Request(method, params, req_id, "id" not in msg, token)


class EnvelopeError(InvalidRequest):
    """An InvalidRequest whose id could still be read, so the answer can carry it."""

    def __init__(self, message: str, request_id: RequestId) -> None:
        super().__init__(message)
        self.request_id = request_id


def _invalid(message: str, request_id: RequestId) -> EnvelopeError:
    return EnvelopeError(message, request_id)
