from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from tcmctl.tasksfile import TasksFile, TasksFileError, load_tasks, parse_tasks
from tcmd.errors import InvalidParams

ROOT = Path(__file__).resolve().parents[2]

TOML = """\
agent = "shell"
managers = 2
strategy = "least-loaded"
retry = { attempts = 3, baseMs = 200, capMs = 1000 }

[[tasks]]
id = "a"
name = "First"
instruction = "echo a"
priority = "high"
timeoutMs = 5000
completionPattern = '^a$'

[[tasks]]
id = "b"
instruction = "echo b"
extraField = [1, 2]
"""

TASK_A = {"id": "a", "instruction": "echo a"}
TASK_B = {"id": "b", "instruction": "echo b", "context": "ctx", "priority": "low"}


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def stdin(monkeypatch: pytest.MonkeyPatch, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def error(tmp_path: Path, name: str, text: str | bytes) -> str:
    with pytest.raises(TasksFileError) as info:
        load_tasks(write(tmp_path, name, text))
    return str(info.value)


def toml_str(s: str) -> str:
    """A TOML basic string holding exactly ``s``."""
    escaped = "".join(c if c >= " " and c not in '"\\\x7f' else f"\\u{ord(c):04x}" for c in s)
    return f'"{escaped}"'


# formats


def test_toml_options_and_tasks(tmp_path: Path) -> None:
    tf = load_tasks(write(tmp_path, "job.toml", TOML))
    assert tf.options == {
        "agent": "shell",
        "managers": 2,
        "strategy": "least-loaded",
        "retry": {"attempts": 3, "baseMs": 200, "capMs": 1000},
    }
    assert tf.tasks == [
        {
            "id": "a",
            "name": "First",
            "instruction": "echo a",
            "priority": "high",
            "timeoutMs": 5000,
            "completionPattern": "^a$",
        },
        {"id": "b", "instruction": "echo b", "extraField": [1, 2]},
    ]


def test_json_list(tmp_path: Path) -> None:
    tf = load_tasks(write(tmp_path, "job.json", json.dumps([TASK_A, TASK_B])))
    assert tf == TasksFile(tasks=[TASK_A, TASK_B], options={})


def test_json_object_with_options(tmp_path: Path) -> None:
    doc = {"agent": "shell", "maxConcurrent": 4, "tasks": [TASK_A], "workDir": "/w"}
    tf = load_tasks(write(tmp_path, "job.json", json.dumps(doc)))
    assert tf.tasks == [TASK_A]
    assert tf.options == {"agent": "shell", "maxConcurrent": 4, "workDir": "/w"}


@pytest.mark.parametrize("name", ["job.jsonl", "job.ndjson", "JOB.JSONL"])
def test_json_lines_skip_blank_and_comment_lines(tmp_path: Path, name: str) -> None:
    text = f"# my tasks\n\n{json.dumps(TASK_A)}\r\n   \n  # indented comment\n{json.dumps(TASK_B)}"
    assert load_tasks(write(tmp_path, name, text)) == TasksFile([TASK_A, TASK_B], {})


def test_utf8_bom_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "job.json", b"\xef\xbb\xbf" + json.dumps([TASK_A]).encode())
    assert load_tasks(path).tasks == [TASK_A]


def test_quickstart_example_loads() -> None:
    tf = load_tasks(ROOT / "examples" / "quickstart.toml")
    assert tf.options == {
        "agent": "shell",
        "managers": 2,
        "strategy": "least-loaded",
        "isolation": "shared",
        "retry": {"attempts": 3, "baseMs": 200, "capMs": 1000},
    }
    assert [t["id"] for t in tf.tasks] == [f"t{i:02}" for i in range(1, 13)]
    assert {t["priority"] for t in tf.tasks} == {"critical", "high", "medium", "low"}
    assert all(t["name"] for t in tf.tasks)
    assert any("completionPattern" in t for t in tf.tasks)
    assert any(".tcm-retry-demo" in t["instruction"] for t in tf.tasks)


# stdin and sniffing


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(json.dumps([TASK_A, TASK_B], indent=2), id="json-list"),
        pytest.param(json.dumps({"tasks": [TASK_A, TASK_B]}, indent=2), id="json-object"),
        pytest.param(f"{json.dumps(TASK_A)}\n{json.dumps(TASK_B)}\n", id="jsonl"),
        pytest.param(
            '[[tasks]]\nid = "a"\ninstruction = "echo a"\n\n'
            '[[tasks]]\nid = "b"\ninstruction = "echo b"\ncontext = "ctx"\npriority = "low"\n',
            id="toml-starting-with-bracket",
        ),
    ],
)
def test_stdin_is_sniffed(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    stdin(monkeypatch, text)
    assert load_tasks(Path("-")).tasks == [TASK_A, TASK_B]


def test_stdin_toml_keeps_options(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin(monkeypatch, TOML)
    tf = load_tasks(Path("-"))
    assert tf.options["agent"] == "shell"
    assert [t["id"] for t in tf.tasks] == ["a", "b"]


def test_stdin_single_json_object_is_one_task(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin(monkeypatch, json.dumps(TASK_A))
    assert load_tasks(Path("-")) == TasksFile([TASK_A], {})


def test_stdin_garbage_names_every_format_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin(monkeypatch, "[[tasks]\nthis is nothing")
    with pytest.raises(TasksFileError) as info:
        load_tasks(Path("-"))
    msg = str(info.value)
    assert msg.startswith("<stdin>: not JSON, JSON Lines or TOML (JSON: ")
    assert "JSON Lines: line 1: invalid JSON" in msg
    assert "TOML: invalid TOML" in msg


def test_stdin_validation_errors_are_not_masked_by_sniffing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stdin(monkeypatch, json.dumps([{"id": "a"}]))
    with pytest.raises(TasksFileError, match=r"^<stdin>: tasks\[0\] \(id 'a'\): instruction: "):
        load_tasks(Path("-"))


def test_unknown_extension_is_sniffed(tmp_path: Path) -> None:
    assert load_tasks(write(tmp_path, "tasks.txt", TOML)).options["managers"] == 2
    assert load_tasks(write(tmp_path, "fd63", json.dumps([TASK_A]))).tasks == [TASK_A]


def test_parse_tasks_refuses_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown tasks format 'yaml'"):
        parse_tasks("", fmt="yaml", source="x")


# errors: each names the file, where, and the field


def task_json(**fields: object) -> str:
    return json.dumps([TASK_A, {"id": "x", "instruction": "true", **fields}])


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("j.toml", 'agent = "shell"\n', "j.toml: no tasks: add [[tasks]] tables"),
        ("j.toml", "[tasks]\nid = 1\n", "j.toml: tasks: must be an array of tables ([[tasks]])"),
        ("j.toml", "tasks = []\n", "j.toml: tasks: no tasks: the list is empty"),
        ("j.toml", "[[tasks]]\nid = \n", "j.toml: invalid TOML: "),
        ("j.toml", "tasks = [1]\n", "j.toml: tasks[0]: a task must be an object, not an integer"),
        ("j.json", '{"agent": "shell"}', 'j.json: no tasks: the object needs a "tasks" list'),
        ("j.json", '"tasks"', 'j.json: expected a list of tasks or an object with "tasks", not'),
        ("j.json", '{"tasks": {"id": "a"}}', "j.json: tasks: must be a list, not an object"),
        ("j.json", "[]", "j.json: tasks: no tasks: the list is empty"),
        ("j.json", "[{]", "j.json: invalid JSON: "),
        ("j.json", '[["a"]]', "j.json: tasks[0]: a task must be an object, not a list"),
        ("j.jsonl", "# only a comment\n\n", "j.jsonl: tasks: no tasks: the list is empty"),
        ("j.jsonl", f"{json.dumps(TASK_A)}\n\n{{oops\n", "j.jsonl: line 3: invalid JSON: "),
        ("j.jsonl", f"#\n{json.dumps(TASK_A)}\n[1]\n", "j.jsonl: line 3: a task must be an obj"),
        ("j.jsonl", '\n{"instruction": "x"}\n', "j.jsonl: line 2: id: missing"),
        ("j.json", task_json(id=None), "tasks[1]: id: must be a string, not null"),
        ("j.json", task_json(id=7), "tasks[1]: id: must be a string, not an integer"),
        ("j.json", task_json(id=""), "tasks[1]: id: must not be empty"),
        ("j.json", task_json(id=" \t"), "tasks[1]: id: must not be empty"),
        ("j.json", json.dumps([{"id": "a"}]), "j.json: tasks[0] (id 'a'): instruction: missing"),
        ("j.json", task_json(instruction=""), "tasks[1] (id 'x'): instruction: must not be empty"),
        ("j.json", task_json(instruction=["ls"]), "(id 'x'): instruction: must be a string, not"),
        ("j.json", task_json(id="a"), "j.json: tasks[1]: id: duplicate 'a' (first at tasks[0])"),
        ("j.json", task_json(priority="urgent"), "(id 'x'): priority: must be one of critical, h"),
        ("j.json", task_json(priority="HIGH"), "priority: must be one of critical, high, mediu"),
        ("j.json", task_json(priority=None), "priority: must be one of critical, high, medium"),
        ("j.json", task_json(timeoutMs=0), "(id 'x'): timeoutMs: must be a positive integer"),
        ("j.json", task_json(timeoutMs=-5), "timeoutMs: must be a positive integer (millisecon"),
        ("j.json", task_json(timeoutMs=1.5), "timeoutMs: must be a positive integer"),
        ("j.json", task_json(timeoutMs=True), "timeoutMs: must be a positive integer"),
        ("j.json", task_json(timeoutMs="1000"), "timeoutMs: must be a positive integer"),
        ("j.json", task_json(name=3), "(id 'x'): name: must be a string, not an integer"),
        ("j.json", task_json(context={}), "(id 'x'): context: must be a string, not an object"),
        ("j.json", task_json(completionPattern="(a"), "completionPattern: not a valid regex"),
        ("j.json", task_json(completionPattern=1), "completionPattern: must be a string"),
        ("j.json", task_json(dependsOn="a"), "(id 'x'): dependsOn: must be a list of task ids"),
        ("j.json", task_json(dependsOn=[""]), "dependsOn: must be a list of task ids"),
        ("j.json", task_json(dependsOn=["zz"]), "tasks[1] (id 'x'): dependsOn: 'zz' is no task"),
        ("j.json", task_json(runIfDependencyFails=1), "runIfDependencyFails: must be true or f"),
    ],
)
def test_errors_name_file_task_and_field(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    msg = error(tmp_path, name, text)
    assert expected in msg
    assert msg.startswith(f"{tmp_path / name}: ")


def test_jsonl_duplicate_names_both_lines(tmp_path: Path) -> None:
    text = f"{json.dumps(TASK_A)}\n# again:\n{json.dumps(TASK_A)}\n"
    msg = error(tmp_path, "j.jsonl", text)
    assert msg.endswith("j.jsonl: line 3: id: duplicate 'a' (first at line 1)")


def test_invalid_toml_and_json_say_where(tmp_path: Path) -> None:
    assert "line 3" in error(tmp_path, "j.toml", 'agent = "shell"\n\nmanagers = = 2\n')
    assert "line 2 column" in error(tmp_path, "j.json", '[\n  {"id": "a",,}\n]')


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(TasksFileError, match=r"nope\.toml: cannot read: No such file"):
        load_tasks(tmp_path / "nope.toml")
    (tmp_path / "d.json").mkdir()
    with pytest.raises(TasksFileError, match=r"d\.json: cannot read: Is a directory"):
        load_tasks(tmp_path / "d.json")


def test_not_utf8(tmp_path: Path) -> None:
    msg = error(tmp_path, "j.json", b'[{"id": "\xff"}]')
    assert msg.endswith("j.json: not UTF-8 (bad byte at offset 9)")


def test_deep_nesting_is_an_error_not_a_crash(tmp_path: Path) -> None:
    assert "invalid JSON" in error(tmp_path, "j.json", "[" * 100_000)
    assert "invalid TOML" in error(tmp_path, "j.toml", "x = " + "[" * 100_000)


def test_error_is_a_value_error_and_a_tcm_error_with_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="priority") as info:
        load_tasks(write(tmp_path, "j.json", task_json(priority="p0")))
    exc = info.value
    assert isinstance(exc, TasksFileError) and isinstance(exc, InvalidParams)
    assert (exc.source, exc.where, exc.field) == (str(tmp_path / "j.json"), "tasks[1] (id 'x')",
                                                  "priority")  # fmt: skip
    assert exc.data == {"file": exc.source, "where": exc.where, "field": "priority"}


def test_hostile_value_in_an_error_is_escaped_and_cut(tmp_path: Path) -> None:
    msg = error(tmp_path, "j.json", task_json(priority="\x1b[31m" + "x" * 500))
    assert "\x1b" not in msg
    assert "'\\x1b[31mxxx" in msg
    assert len(msg.removeprefix(str(tmp_path))) < 150


# strings kept exactly

HOSTILE = [
    "héllo wörld — ✓ 🚀 日本語",
    "\"double\" 'single' `back` $(rm -rf /) ${HOME} \\n \\",
    "line one\nline two\r\n\ttabbed",
    "\x1b[31mred\x1b[0m and a bell \x07",
    "nul \x00 inside",
    "line separators \u2028 \u2029 and \x85 next-line",
    "right-to-left \u202e override, zero width \u200b joiner \u200d",
    " leading and trailing spaces ",
    "#not a comment",
]


def test_hostile_strings_kept_exactly_in_json_and_jsonl(tmp_path: Path) -> None:
    tasks = [
        {"id": f"h{i}-{s}", "instruction": s, "name": s, "context": s}
        for i, s in enumerate(HOSTILE)
    ]
    assert load_tasks(write(tmp_path, "h.json", json.dumps(tasks))).tasks == tasks
    jsonl = "\n".join(json.dumps(t, ensure_ascii=False) for t in tasks)
    assert load_tasks(write(tmp_path, "h.jsonl", jsonl)).tasks == tasks


def test_hostile_strings_kept_exactly_in_toml(tmp_path: Path) -> None:
    text = "".join(
        f"[[tasks]]\nid = {toml_str(f'h{i}-{s}')}\ninstruction = {toml_str(s)}\n"
        for i, s in enumerate(HOSTILE)
    )
    tasks = load_tasks(write(tmp_path, "h.toml", text)).tasks
    assert tasks == [{"id": f"h{i}-{s}", "instruction": s} for i, s in enumerate(HOSTILE)]


def test_unicode_keys_and_ids_through_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = [{"id": "задача-1", "instruction": "echo ✓", "ключ": "значение"}]
    stdin(monkeypatch, json.dumps(tasks, ensure_ascii=False).encode())
    assert load_tasks(Path("-")).tasks == tasks


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("job.toml", 'agent = "shell"\nretries = 3\n[[tasks]]\nid = "a"\ninstruction = "x"\n'),
        ("job.json", json.dumps({"retries": 3, "tasks": [TASK_A]})),
    ],
)
def test_an_unknown_top_level_key_is_refused(tmp_path: Path, name: str, text: str) -> None:
    message = error(tmp_path, name, text)
    assert message.startswith(f"{tmp_path / name}: retries: unexpected field")
    assert "maxConcurrent" in message  # it says what a run takes


def test_claude_example_loads() -> None:
    tf = load_tasks(ROOT / "examples" / "claude.toml")
    assert tf.options["agent"] == "claude"
    assert [t["id"] for t in tf.tasks] == ["haiku", "primes", "readme"]


def test_dependencies_are_kept_as_written(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        '[[tasks]]\nid = "a"\ninstruction = "echo a"\n\n'
        '[[tasks]]\nid = "b"\ninstruction = "echo {{a.result}}"\ndependsOn = ["a"]\n'
        "runIfDependencyFails = true\n"
    )
    tasks = load_tasks(path).tasks
    assert tasks[1]["dependsOn"] == ["a"] and tasks[1]["runIfDependencyFails"] is True
