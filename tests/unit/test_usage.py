"""Usage from Claude Code transcripts: reading, de-duplication, prices, the ledger's scopes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tcmd.config import Settings
from tcmd.errors import ConfigError
from tcmd.model import Instance, Role
from tcmd.prices import Prices
from tcmd.store.jsonfile import JsonFileStore
from tcmd.usage.ledger import Ledger, scopes_of
from tcmd.usage.transcript import NotATranscript, read_new


def assistant(
    msg_id: str, inp: int, out: int, cw: int = 0, cr: int = 0, model: str = "claude-sonnet-4-5"
) -> dict[str, Any]:
    usage = {"input_tokens": inp, "output_tokens": out, "cache_creation_input_tokens": cw,
             "cache_read_input_tokens": cr}  # fmt: skip
    return {"type": "assistant", "requestId": "req_" + msg_id, "uuid": os.urandom(4).hex(),
            "message": {"id": msg_id, "model": model, "role": "assistant",
                        "content": [{"type": "text", "text": "hi"}], "usage": usage}}  # fmt: skip


def append(path: Path, *entries: dict[str, Any], tail: str = "") -> None:
    with path.open("a") as f:
        for e in entries:
            f.write(json.dumps(e, separators=(",", ":")) + "\n")
        f.write(tail)


def spec(iid: str = "spec_1_2_3", run_id: str | None = "run_1") -> Instance:
    return Instance(iid, Role.SPECIALIST, None, "/", "claude", "", "t", "s", run_id=run_id)


@pytest.fixture
def store(tmp_path: Path) -> JsonFileStore:
    s = JsonFileStore(tmp_path / "store")
    s.open()
    return s


def test_one_message_written_in_several_lines_counts_once(tmp_path: Path) -> None:
    t = tmp_path / "t.jsonl"
    append(t, {"type": "user", "message": {"role": "user", "content": "a \"usage\" word"}},
           assistant("m1", 10, 5), assistant("m1", 10, 5),  # two blocks, one message
           assistant("m2", 3, 1, cw=100, cr=50),
           {"type": "assistant", "message": {"id": "e", "model": "<synthetic>",
                                             "usage": {"input_tokens": 0}}})  # fmt: skip
    found, end = read_new(str(t), 0)
    assert end == t.stat().st_size
    assert [m.key for m in found] == ["m1:req_m1", "m1:req_m1", "m2:req_m2"]


def test_long_lines_are_judged_by_their_ends(tmp_path: Path) -> None:
    t = tmp_path / "t.jsonl"
    big = assistant("m1", 10, 5000)
    big["message"]["content"] = [
        {"type": "tool_use", "name": "Write", "input": {"content": "a" * 50_000}}
    ]
    result = {
        "type": "user",
        "message": {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "content": "b" * 50_000 + '"usage" "assistant"' + "c" * 50_000,
                }
            ],
        },
    }
    append(t, result, big, result)
    found, _ = read_new(str(t), 0)
    assert [(m.key, m.counts) for m in found] == [("m1:req_m1", (10, 5000, 0, 0, 0))]


def test_a_line_still_being_written_waits_for_the_next_read(tmp_path: Path) -> None:
    t = tmp_path / "t.jsonl"
    append(t, assistant("m1", 1, 1), tail='{"type":"assistant","mess')
    found, end = read_new(str(t), 0)
    assert len(found) == 1
    assert end < t.stat().st_size
    assert read_new(str(t), end) == ([], end)  # nothing complete after it yet
    with t.open("a") as f:
        f.write('sage":{}}\n')  # the line ends: read from where the last read stopped
    assert read_new(str(t), end) == ([], t.stat().st_size)


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "f.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(NotATranscript, match="not a regular file"):
        read_new(str(fifo), 0)  # and did not block on a FIFO with no writer
    with pytest.raises(NotATranscript):
        read_new(str(tmp_path / "missing.jsonl"), 0)


def test_ledger_counts_each_message_once_per_scope_and_grows_by_the_difference(
    tmp_path: Path, store: JsonFileStore
) -> None:
    t = tmp_path / "t.jsonl"
    ledger = Ledger(store, Prices.load())
    append(t, assistant("m1", 10, 5), assistant("m1", 10, 5))
    ledger.read(spec(), str(t))
    append(t, assistant("m1", 10, 9), assistant("m2", 1, 1, cw=100, cr=1000))  # m1 grew by 4
    ledger.read(spec(), str(t))
    ledger.read(spec(), str(t))  # nothing new: nothing counted
    want = [11, 10, 100, 1000, 0]
    for scope in [("all", ""), ("run", "run_1"), ("manager", "mgr_1_2"), ("tree", "exec_1"),
                  ("instance", "spec_1_2_3")]:  # fmt: skip
        assert ledger.of(*scope) == {"claude-sonnet-4-5": want}, scope
    report = ledger.report("run", "run_1")
    assert report["tokens"] == {"input": 11, "output": 10, "cacheCreation": 100,
                                "cacheRead": 1000, "total": 1121}  # fmt: skip
    # $3 / $15 / $3.75 / $0.30 per million
    assert report["costUsd"] == pytest.approx((11 * 3 + 10 * 15 + 100 * 3.75 + 1000 * 0.3) / 1e6)
    assert report["costComplete"] is True
    assert ledger.accounts["spec_1_2_3"].messages == 2


def test_totals_and_offsets_survive_a_restart_without_counting_twice(
    tmp_path: Path, store: JsonFileStore
) -> None:
    t = tmp_path / "t.jsonl"
    ledger = Ledger(store, Prices.load())
    append(t, assistant("m1", 10, 5))
    ledger.read(spec(), str(t))
    store.close()
    append(t, assistant("m2", 7, 7))  # written while tcmd was down

    again = JsonFileStore(tmp_path / "store")
    again.open()
    reborn = Ledger(again, Prices.load())
    reborn.load()
    assert reborn.of("run", "run_1") == {"claude-sonnet-4-5": [10, 5, 0, 0, 0]}
    reborn.read(spec(), str(t))
    assert reborn.of("run", "run_1") == {"claude-sonnet-4-5": [17, 12, 0, 0, 0]}


def test_a_replaced_file_is_read_again_without_counting_what_was_counted(
    tmp_path: Path, store: JsonFileStore
) -> None:
    t = tmp_path / "t.jsonl"
    ledger = Ledger(store, Prices.load())
    append(t, assistant("m1", 10, 5), assistant("m2", 10, 5))
    ledger.read(spec(), str(t))
    t.unlink()
    append(t, assistant("m2", 10, 5))  # shorter than the offset: read from the start
    ledger.read(spec(), str(t))
    assert ledger.of("all") == {"claude-sonnet-4-5": [20, 10, 0, 0, 0]}


def test_an_unknown_model_counts_tokens_and_leaves_its_cost_unknown(
    tmp_path: Path, store: JsonFileStore
) -> None:
    t = tmp_path / "t.jsonl"
    ledger = Ledger(store, Prices.load())
    append(t, assistant("m1", 1000, 0, model="claude-future-9"))
    ledger.read(spec(), str(t))
    report = ledger.report("all")
    assert report["tokens"]["total"] == 1000
    assert report["costUsd"] is None
    assert report["unpricedModels"] == ["claude-future-9"]
    append(t, assistant("m2", 1_000_000, 0, model="claude-haiku-4-5-20251001"))
    ledger.read(spec(), str(t))
    report = ledger.report("all")
    assert report["costUsd"] == pytest.approx(1.0)  # the priced part, said to be incomplete
    assert report["costComplete"] is False


def test_prices_match_dated_ids_and_a_file_overrides(tmp_path: Path) -> None:
    prices = Prices.load()
    assert prices.of("claude-sonnet-4-5-20250929") == prices.of("claude-sonnet-4-5")
    assert prices.of("claude-opus-4-7") is None  # no guessing from a family name
    override = tmp_path / "prices.toml"
    override.write_text("[models.my-model]\ninput = 1\noutput = 2\ncacheWrite = 3\ncacheRead = 4\n")
    mine = Prices.load(override).of("my-model")
    assert mine is not None
    assert mine.cost([1_000_000, 0, 1_000_000, 0, 0]) == pytest.approx(4.0)
    assert mine.cache_write_1h == 2.0  # 2x input when not given
    override.write_text('[models.bad]\ninput = "cheap"\n')
    with pytest.raises(ConfigError, match=r"TCM_PRICES.*models.bad.input"):
        Prices.load(override)


def test_scopes_come_from_the_ids() -> None:
    assert scopes_of("spec_1_2_3") == ("mgr_1_2", "exec_1")
    assert scopes_of("mgr_4_1") == ("mgr_4_1", "exec_4")
    assert scopes_of("exec_7") == (None, "exec_7")
    assert scopes_of("weird") == (None, None)


def test_reads_on_from_any_offset_of_a_long_transcript(
    tmp_path: Path, store: JsonFileStore
) -> None:
    t = tmp_path / "t.jsonl"
    ledger = Ledger(store, Prices.load())
    for i in range(300):  # offsets far past the first page, at no page boundary
        append(
            t,
            {"type": "user", "message": {"content": "x" * (i * 7 % 500)}},
            assistant(f"m{i}", 1, i),
        )
        ledger.read(spec(), str(t))
    assert ledger.of("all") == {"claude-sonnet-4-5": [300, sum(range(300)), 0, 0, 0]}


def test_settings_check_the_prices_file_and_the_budget(tmp_path: Path) -> None:
    base = {"TCM_SOCKET": str(tmp_path / "s.sock"), "TCM_STATE_DIR": str(tmp_path)}
    good = tmp_path / "p.json"
    good.write_text('{"models": {"m": {"input": 1, "output": 2, "cacheWrite": 1, "cacheRead": 0}}}')
    settings = Settings.from_env({**base, "TCM_PRICES": str(good), "TCM_BUDGET_USD": "12.5"})
    assert (settings.prices_file, settings.budget_usd) == (good, 12.5)
    with pytest.raises(ConfigError, match=r"TCM_PRICES.*cannot read"):
        Settings.from_env({**base, "TCM_PRICES": str(tmp_path / "missing.json")})
    for bad in ("0", "-1", "lots", "inf", "nan"):
        with pytest.raises(ConfigError, match="TCM_BUDGET_USD: must be an amount"):
            Settings.from_env({**base, "TCM_BUDGET_USD": bad})
