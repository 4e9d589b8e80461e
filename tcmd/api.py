"""The tool catalogue: one table of name → params schema → result schema → handler.

RPC methods, MCP tools and CLI commands are three faces of this table. Services hand in
their tools (``Catalogue.extend(service.tools())``); ``describe()`` is what the ``tools``
method returns and what the MCP shim lists as-is. Params are validated against the
pydantic model before any handler runs; an error names the offending field.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from tcmd.errors import Forbidden, InvalidParams, MethodNotFound


class Params(BaseModel):
    """Base of every params model: unknown fields and type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoParams(Params):
    pass


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL byte (it goes on a command line)")
    return value


# Text that reaches an agent's command line, environment or working directory, where the
# kernel cannot take a NUL byte: refused as invalid params, never met later in Popen.
ArgText = Annotated[str, AfterValidator(_no_nul)]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the operator (no token) or an instance, proven by its token."""

    instance_id: str | None = None
    role: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.instance_id is None


OPERATOR = Caller()
P = TypeVar("P", bound=Params)
Handler = Callable[[Caller, Any], Awaitable[Any] | Any]


@dataclass(frozen=True, slots=True)
class Tool(Generic[P]):
    """One entry of the catalogue.

    ``inline`` tools are synchronous, quick and answered straight from the read loop;
    the others run as tasks so a slow call never holds up the connection. A
    ``long_poll`` tool waits for news (``events`` follow, ``wait``): when tcmd stops it is
    answered at once with ``Stopping`` instead of holding the stop up.
    """

    name: str
    description: str
    params: type[P]
    handler: Callable[[Caller, P], Any]
    result_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    inline: bool = False
    read_only: bool = False
    destructive: bool = False
    operator_only: bool = False
    long_poll: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "inputSchema": _clean_schema(self.params.model_json_schema()),
            "outputSchema": self.result_schema,
            "annotations": {
                "readOnlyHint": self.read_only,
                "destructiveHint": self.destructive,
                "idempotentHint": self.read_only,
            },
        }


def result_schema(model: type[BaseModel], *, many: bool = False) -> dict[str, Any]:
    """JSON Schema of a result model (an array of it when ``many``)."""
    schema = _clean_schema(model.model_json_schema(mode="serialization"))
    return {"type": "array", "items": schema} if many else schema


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's generated titles ("Instanceid"): they cost tokens and say nothing."""
    clean: dict[str, Any] = _untitled(schema)
    clean.setdefault("properties", {})
    return clean


def _untitled(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _untitled(v) for k, v in node.items()
                if not (k == "title" and isinstance(v, str))}  # fmt: skip
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


class Catalogue:
    """The table of tools, validated once at registration."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool[Any]] = {}
        self._described: list[dict[str, Any]] | None = None

    def extend(self, tools: Iterable[Tool[Any]]) -> None:
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"tool {tool.name!r} registered twice")
            if tool.inline and inspect.iscoroutinefunction(tool.handler):
                raise ValueError(f"inline tool {tool.name!r} must be synchronous")
            self._tools[tool.name] = tool
        self._described = None

    def get(self, name: str) -> Tool[Any]:
        try:
            return self._tools[name]
        except KeyError:
            raise MethodNotFound(f"unknown method {name!r}; the tools method lists them") from None

    def names(self) -> list[str]:
        return sorted(self._tools)

    def describe(self) -> list[dict[str, Any]]:
        if self._described is None:
            self._described = [self._tools[n].describe() for n in self.names()]
        return self._described

    @staticmethod
    def bind(tool: Tool[P], caller: Caller, raw: dict[str, Any]) -> P:
        """Check the caller may use ``tool`` and validate ``raw`` into its params model."""
        if tool.operator_only and not caller.is_operator:
            raise Forbidden(f"{tool.name} is for the operator only, not {caller.instance_id}")
        try:
            return tool.params.model_validate(raw)
        except ValidationError as exc:
            raise invalid_params(exc) from None


def invalid_params(exc: ValidationError) -> InvalidParams:
    """Turn pydantic's report into -32602 with every offending field named."""
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "params"
        what = "unexpected field" if err["type"] == "extra_forbidden" else err["msg"]
        problems.append({"field": where, "message": what, "type": err["type"]})
    text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return InvalidParams(f"invalid params: {text}", data={"errors": problems})
