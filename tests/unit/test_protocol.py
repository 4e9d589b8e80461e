from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from tcmd import protocol
from tcmd.api import Catalogue, Params, Tool, invalid_params
from tcmd.errors import InvalidRequest, MethodNotFound, NotFound, ParseError, TcmError, from_json


def test_request_round_trip_with_token() -> None:
    frame = protocol.encode_request("send", {"text": 'a "q" $(x)\n'}, 3, token="tok")
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    req = protocol.decode_request(frame)
    assert (req.method, req.params, req.id, req.token, req.notification) == (
        "send",
        {"text": 'a "q" $(x)\n'},
        3,
        "tok",
        False,
    )


def test_notification_and_null_params() -> None:
    req = protocol.decode_request(b'{"jsonrpc":"2.0","method":"ping","params":null}')
    assert req.notification and req.params == {}


@pytest.mark.parametrize("line", [b"{", b"", b"\xff"])
def test_parse_errors(line: bytes) -> None:
    with pytest.raises(ParseError):
        protocol.decode_request(line)


@pytest.mark.parametrize(
    "line",
    [
        b"[]",
        b'"x"',
        b'{"jsonrpc":"2.0","id":true,"method":"m"}',
        b'{"jsonrpc":"2.0","method":"m","token":1}',
    ],
)
def test_invalid_requests(line: bytes) -> None:
    with pytest.raises(InvalidRequest):
        protocol.decode_request(line)


def test_errors_round_trip_through_json() -> None:
    err = NotFound("no instance 'x'", data={"instanceId": "x"})
    back = from_json(orjson.loads(protocol.encode_error(1, err))["error"])
    assert type(back) is NotFound and back.data == {"instanceId": "x"}
    odd = from_json({"code": -1, "message": "m"})
    assert type(odd) is TcmError and odd.code == -1


class P(Params):
    count: int
    name: str = "x"


def test_invalid_params_names_every_field() -> None:
    with pytest.raises(ValidationError) as info:
        P.model_validate({"count": "3", "extra": 1})
    err = invalid_params(info.value)
    assert err.code == -32602
    assert "count:" in err.message and "extra: unexpected field" in err.message
    assert {e["field"] for e in err.data["errors"]} == {"count", "extra"}  # type: ignore[index]


def test_catalogue_refuses_twins_and_unknown_names() -> None:
    cat = Catalogue()
    tool = Tool("t", "d", P, lambda c, p: p.count, inline=True)
    cat.extend([tool])
    with pytest.raises(ValueError, match="twice"):
        cat.extend([tool])
    with pytest.raises(MethodNotFound):
        cat.get("u")
    assert cat.describe()[0]["inputSchema"]["required"] == ["count"]
