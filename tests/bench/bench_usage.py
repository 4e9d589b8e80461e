"""Benchmark: tcmd's CPU per turn for reading usage from a Claude Code transcript.

    .venv/bin/python -m tests.bench.bench_usage

What tcmd does at a turn's Stop hook, exactly as the daemon does it: ``Ledger.on_hook``
reads the transcript on from its offset, parses the usage-bearing lines, adds to five
scopes and writes the account to a real ``JsonFileStore`` (journal append). Each turn
appends to the transcript what Claude Code writes for one: the prompt, then for each API
call an assistant message in two lines (text and tool_use blocks, same id and usage) and
a user line with the tool's result. CPU is ``time.process_time`` around ``on_hook`` only
(writing the transcript is the agent's work, not tcmd's); median of the turns.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from tcmd.model import Instance, Role
from tcmd.prices import Prices
from tcmd.store.jsonfile import JsonFileStore
from tcmd.usage.ledger import Ledger

TURNS = 300
# what a tool result looks like: source code (tcmd's own, repeated to the size wanted)
SOURCE = "".join(p.read_text() for p in sorted(Path("tcmd").rglob("*.py"))) * 4
SHAPES = {  # name -> (API calls per turn, bytes of each tool result)
    "one message": (1, 0),
    "8 calls, 10 kB results": (8, 10_000),
    "20 calls, 100 kB results": (20, 100_000),
}


def line(entry: dict[str, object]) -> str:
    return json.dumps(entry, separators=(",", ":")) + "\n"


def turn_text(calls: int, result_bytes: int) -> str:
    out = [line({"type": "user", "uuid": str(uuid.uuid4()),
                 "message": {"role": "user", "content": "do the next thing " * 20}})]  # fmt: skip
    for _ in range(calls):
        msg, req = f"msg_{uuid.uuid4().hex[:24]}", f"req_{uuid.uuid4().hex[:24]}"
        usage = {"input_tokens": 4, "output_tokens": 300, "cache_creation_input_tokens": 2000,
                 "cache_read_input_tokens": 40_000, "service_tier": "standard",
                 "cache_creation": {"ephemeral_5m_input_tokens": 2000,
                                    "ephemeral_1h_input_tokens": 0}}  # fmt: skip
        for block in ({"type": "text", "text": "Let me look. " * 30},
                      {"type": "tool_use", "id": "toolu_1", "name": "Bash",
                       "input": {"command": "grep -rn usage ."}}):  # fmt: skip
            out.append(line({"type": "assistant", "requestId": req, "uuid": str(uuid.uuid4()),
                             "message": {"id": msg, "model": "claude-sonnet-4-5",
                                         "role": "assistant", "content": [block],
                                         "usage": usage}}))  # fmt: skip
        if result_bytes:
            out.append(line({"type": "user", "uuid": str(uuid.uuid4()),
                             "message": {"role": "user", "content": [
                                 {"type": "tool_result", "tool_use_id": "toolu_1",
                                  "content": SOURCE[:result_bytes]}]}}))  # fmt: skip
    return "".join(out)


def measure(calls: int, result_bytes: int) -> tuple[float, float, float, int]:
    """Median and 95th percentile ms of tcmd CPU per turn, the median ms of a re-read
    that finds nothing new (two follow each turn's end), and the bytes of one turn."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        store = JsonFileStore(tmp / "store")
        store.open()
        ledger = Ledger(store, Prices.load())
        inst = Instance("spec_1_1_1", Role.SPECIALIST, "mgr_1_1", "/", "claude", "", "t", "s",
                        run_id="run_1")  # fmt: skip
        transcript = tmp / "session.jsonl"
        payload = {"hook_event_name": "Stop", "transcript_path": str(transcript)}
        text = turn_text(calls, result_bytes)
        costs, rereads = [], []
        for _ in range(TURNS):
            with transcript.open("a") as f:
                f.write(turn_text(calls, result_bytes))
            t0 = time.process_time()
            ledger.on_hook(inst, "Stop", payload)
            t1 = time.process_time()
            ledger.read(inst, str(transcript))  # a re-read after the turn: nothing new
            costs.append((t1 - t0) * 1000)
            rereads.append((time.process_time() - t1) * 1000)
        store.close()
        want = TURNS * calls * 300
        assert ledger.report("run", "run_1")["tokens"]["output"] == want  # counted once each
        costs.sort()
        return (statistics.median(costs), costs[int(len(costs) * 0.95)],
                statistics.median(rereads), len(text))  # fmt: skip


def main() -> None:
    print(f"tcmd CPU per turn to read its usage (Ledger.on_hook at Stop), {TURNS} turns:")
    for name, (calls, size) in SHAPES.items():
        median, p95, reread, nbytes = measure(calls, size)
        print(f"  {name:26s} ({nbytes / 1000:7.1f} kB/turn)  median {median:.3f} ms"
              f"   p95 {p95:.3f} ms   re-read {reread:.3f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
