"""A small fake of the Anthropic Messages API, scripted by the prompt it is sent.

Real Claude Code pointed at it (``ANTHROPIC_BASE_URL``) runs whole turns offline: the
fake answers ``POST /v1/messages`` with the streaming (SSE) or plain JSON replies the
real API gives, and records every request so a test can check what reached "the model".

What it answers is chosen by the lines of the turn's prompt that start with ``@``:

| directive | answer |
|---|---|
| (none) | ``ok: <n> chars`` |
| ``@reply TEXT`` | the final text is TEXT |
| ``@tool NAME {json}`` | call tool NAME with that input; the final text quotes the results |
| ``@fail STATUS`` | answer with HTTP STATUS (401, 429, 500, 529) and the API's error body |
| ``@slow SECONDS`` | wait that long before answering (the turn stays busy) |
| ``@usage in=N out=N cw=N cr=N`` | tokens each answer reports (default: 10 in, 5 out) |

Several ``@tool`` lines call in order. A deferred MCP tool is first loaded through
``ToolSearch`` (``select:NAME``), as the model does.

Only requests that offer tools (the agent's main loop) follow the script; side requests
(titles, summaries) get a short plain answer. Every answer's usage is kept in
``reported`` (streamed as the real API does: input and cache counts and 1 output token in
``message_start``, the final output count in ``message_delta``). Run it alone with
``python -m tests.fakes.fake_anthropic [--port N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REMINDER = "<system-reminder>"
ERRORS = {
    401: ("authentication_error", "invalid x-api-key"),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


@dataclass
class Step:
    """One assistant message of a scripted turn: a tool call, or the final text."""

    tool: str | None = None
    tool_input: dict[str, Any] = field(default_factory=dict)
    text: str = ""


@dataclass
class Turn:
    """Where a request stands: the prompt of the turn and the tool results so far."""

    prompt: str
    tool_results: list[str]
    tool_names: set[str]


def block_text(content: Any) -> str:
    """The text of a message's content (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif block.get("type") == "tool_result":
            parts.append(block_text(block.get("content")))
    return "".join(parts)


def user_prompt(content: Any) -> str | None:
    """The person's prompt in a user message: its text blocks minus system reminders."""
    if isinstance(content, str):
        return content
    if any(b.get("type") == "tool_result" for b in content or []):
        return None
    texts = [
        b.get("text", "")
        for b in content or []
        if b.get("type") == "text" and not b.get("text", "").lstrip().startswith(REMINDER)
    ]
    # after a failed turn Claude sends the next prompt in the same user message: the
    # newest block is the prompt being answered
    return texts[-1] if texts else None


def current_turn(body: dict[str, Any]) -> Turn | None:
    """The latest prompt of the conversation and the tool results that followed it."""
    messages = body.get("messages") or []
    results: list[str] = []
    for msg in reversed(messages):
        if msg.get("role") != "user":
            continue
        prompt = user_prompt(msg.get("content"))
        if prompt is not None:
            names = {t.get("name", "") for t in body.get("tools") or []}
            return Turn(prompt, list(reversed(results)), names)
        for block in reversed(msg.get("content") or []):
            if block.get("type") == "tool_result":
                results.append(block_text(block.get("content")))
    return None


def directives(prompt: str) -> list[tuple[str, str]]:
    out = []
    for raw in prompt.splitlines():
        line = raw.strip()
        if line.startswith("@"):
            word, _, rest = line[1:].partition(" ")
            out.append((word, rest.strip()))
    return out


def plan(turn: Turn) -> list[Step]:
    """Every assistant message the prompt scripts, in order (the last one is text)."""
    steps: list[Step] = []
    reply: str | None = None
    for word, rest in directives(turn.prompt):
        if word == "reply":
            reply = rest
        elif word == "tool":
            name, _, raw = rest.partition(" ")
            if name.startswith("mcp__") and "ToolSearch" in turn.tool_names:
                steps.append(Step(tool="ToolSearch", tool_input={"query": f"select:{name}"}))
            steps.append(Step(tool=name, tool_input=json.loads(raw) if raw.strip() else {}))
    if reply is None:
        reply = f"ok: {len(turn.prompt)} chars"
    if any(s.tool for s in steps):
        results = " | ".join(turn.tool_results)
        reply = f"{reply}\ntool results: {results}"
    steps.append(Step(text=reply))
    return steps


def next_step(turn: Turn) -> Step:
    steps = plan(turn)
    return steps[min(len(turn.tool_results), len(steps) - 1)]


def message_blocks(step: Step) -> list[dict[str, Any]]:
    if step.tool:
        return [
            {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:20]}",
                "name": step.tool,
                "input": step.tool_input,
            }
        ]
    return [{"type": "text", "text": step.text}]


def usage_of(prompt: str | None) -> dict[str, int]:
    """The usage a turn's answers report: its ``@usage`` line, else 10 in and 5 out."""
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0}  # fmt: skip
    names = {"in": "input_tokens", "out": "output_tokens", "cw": "cache_creation_input_tokens",
             "cr": "cache_read_input_tokens"}  # fmt: skip
    for word, rest in directives(prompt or ""):
        if word == "usage":
            usage = dict.fromkeys(usage, 0)
            for pair in rest.split():
                key, _, value = pair.partition("=")
                if key in names:
                    usage[names[key]] = int(value)
    return usage


def sse_events(
    model: str, blocks: list[dict[str, Any]], usage: dict[str, int], msg_id: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The event stream the real API sends for one assistant message."""
    stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    yield (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {**usage, "output_tokens": min(1, usage["output_tokens"])},
            },
        },
    )
    for i, block in enumerate(blocks):
        if block["type"] == "text":
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": i,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {"type": "text_delta", "text": block["text"]},
                },
            )
        else:
            start = {**block, "input": {}}
            yield (
                "content_block_start",
                {"type": "content_block_start", "index": i, "content_block": start},
            )
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {
                        "type": "input_json_delta",
                        "partial_json": json.dumps(block["input"]),
                    },
                },
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": i}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        },
    )
    yield "message_stop", {"type": "message_stop"}


class FakeAnthropic:
    """The fake API on 127.0.0.1 in a background thread; ``requests`` holds every body."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reported: list[dict[str, Any]] = []  # each answer: id, model, main, its usage
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self.reply_error(400, "invalid_request_error", "bad json")
                    return
                with fake.lock:
                    fake.requests.append({"path": self.path, "body": body})
                if self.path.split("?")[0].endswith("/count_tokens"):
                    self.reply_json(200, {"input_tokens": 10})
                elif self.path.split("?")[0].endswith("/v1/messages"):
                    fake.answer(self, body)
                else:
                    self.reply_error(404, "not_found_error", self.path)

            def do_GET(self) -> None:
                self.reply_error(404, "not_found_error", self.path)

            def reply_error(self, status: int, kind: str, message: str) -> None:
                """The API's error body: ``{"type": "error", "error": {type, message}}``."""
                self.reply_json(
                    status, {"type": "error", "error": {"type": kind, "message": message}}
                )

            def reply_json(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_{uuid.uuid4().hex[:20]}")
                self.end_headers()
                self.wfile.write(data)

        self.Handler = Handler
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeAnthropic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, handler: Any, body: dict[str, Any]) -> None:
        model = str(body.get("model") or "claude-fake")
        turn = current_turn(body)
        scripted = turn is not None and bool(body.get("tools"))
        usage = usage_of(turn.prompt if scripted and turn is not None else None)
        msg_id = f"msg_{uuid.uuid4().hex[:24]}"
        if scripted and turn is not None:
            for word, rest in directives(turn.prompt):
                if word == "slow":
                    time.sleep(float(rest or 1))
                if word == "fail":
                    status = int(rest or 529)
                    handler.reply_error(status, *ERRORS.get(status, ERRORS[500]))
                    return
            blocks = message_blocks(next_step(turn))
        else:
            blocks = [{"type": "text", "text": "Fake title"}]
        with self.lock:
            self.reported.append({"id": msg_id, "model": model, "main": scripted, **usage})
        if not body.get("stream"):
            stop = "tool_use" if blocks[0]["type"] == "tool_use" else "end_turn"
            handler.reply_json(
                200,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": blocks,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": usage,
                },
            )
            return
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("cache-control", "no-cache")
        handler.send_header("connection", "close")
        handler.send_header("request-id", f"req_{uuid.uuid4().hex[:20]}")
        handler.end_headers()
        for event, data in sse_events(model, blocks, usage, msg_id):
            handler.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
        handler.wfile.flush()
        handler.close_connection = True

    # what the tests look at

    def main_requests(self) -> list[dict[str, Any]]:
        """Bodies of the agent's main-loop requests (those that offer tools)."""
        with self.lock:
            return [r["body"] for r in self.requests if r["body"].get("tools")]

    def prompts(self) -> list[str]:
        """Every distinct prompt the main loop was asked to answer, in order."""
        seen: list[str] = []
        for body in self.main_requests():
            turn = current_turn(body)
            if turn and turn.prompt not in seen:
                seen.append(turn.prompt)
        return seen

    def tool_results(self, where: Callable[[str], bool] = lambda _: True) -> list[str]:
        """Tool results sent back to the model, newest request's view."""
        out: list[str] = []
        for body in self.main_requests():
            turn = current_turn(body)
            if turn:
                out.extend(r for r in turn.tool_results if where(r) and r not in out)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with FakeAnthropic(args.port) as api:
        print(api.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            api.thread.join()


if __name__ == "__main__":
    main()
