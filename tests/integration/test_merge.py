"""Merge-back and overlap end to end: a real tcmd, shell specialists, real git repositories.

Each task edits its worktree and commits (the shell agent runs the instruction as written);
the merge is then planned, refused, dry-run and applied through `tcmctl merge` and the
mergeRun tool, and the repository is read back with git.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tcmd.errors import Conflict, Forbidden, InvalidParams
from tests.integration.test_cli import TCMCTL, run
from tests.support import AgentDaemon, wait_until

COMMIT = "git add -A && git commit -qm {msg}"


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user git config (signing, hooks) reaches the daemon or its specialists."""
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.delenv("GIT_DIR", raising=False)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def has_branch(repo: Path, branch: str) -> bool:
    ref = ["git", "-C", str(repo), "show-ref", "--verify", "--quiet", f"refs/heads/{branch}"]
    return subprocess.run(ref, check=False, timeout=30).returncode == 0


def repo_in(agents: AgentDaemon) -> Path:
    repo = agents.work_dir
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Test")
    git(repo, "config", "user.email", "test@example.com")
    (repo / "shared.txt").write_text("base\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "base")
    agents.spawn("executive", agent="shell")
    agents.spawn("manager", parent="exec_1", agent="shell")
    return repo


def run_tasks(agents: AgentDaemon, tasks: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = agents.call("executeParallel", {
        "managerId": "mgr_1_1", "tasks": tasks, "workDir": str(agents.work_dir),
        "agent": "shell", "isolation": "worktree", "retry": {"attempts": 1}, **extra,
    })  # fmt: skip
    return out


def edit(task_id: str, path: str, text: str) -> dict[str, Any]:
    body = f"printf '%s\\n' '{text}' > {path} && " + COMMIT.format(msg=task_id)
    return {"id": task_id, "name": f"write {path}", "instruction": body}


def test_a_conflict_stops_before_the_target_and_skipping_merges_the_rest(
    agents: AgentDaemon,
) -> None:
    repo = repo_in(agents)
    out = run_tasks(agents, [edit("a", "shared.txt", "from a"), edit("b", "b.txt", "from b"),
                             edit("c", "shared.txt", "from c")])  # fmt: skip
    assert out["completed"] == 3, [(r["taskId"], r["error"]) for r in out["results"]]
    run_id, old = out["runId"], git(repo, "rev-parse", "main")
    branches = [f"tcm/{run_id}/{t}" for t in "abc"]

    cli = run(["merge", run_id], agents.daemon.env)  # the plan, and no change
    assert cli.returncode == 1, cli.stderr
    lines = {ln.split()[0]: ln.split() for ln in cli.stdout.splitlines()[1:-1]}
    assert lines["a"][1] == "clean" and lines["b"][1] == "clean"
    assert lines["c"][1:] == ["conflicting", "shared.txt"]
    assert "main is untouched" in cli.stdout
    assert git(repo, "rev-parse", "main") == old
    assert (repo / "shared.txt").read_text() == "base\n"

    dry = agents.call("mergeRun", {"runId": run_id, "dryRun": True, "skipConflicting": True})
    assert (dry["applied"], dry["merged"], dry["old"]) == (False, [], old)
    assert [s["status"] for s in dry["steps"]] == ["clean", "clean", "conflicting"]
    assert git(repo, "rev-parse", "main") == old

    (repo / "shared.txt").write_text("local edit\n")  # the checked-out target is dirty
    with pytest.raises(Conflict, match="uncommitted changes"):
        agents.call("mergeRun", {"runId": run_id, "skipConflicting": True})
    assert git(repo, "rev-parse", "main") == old
    assert (repo / "shared.txt").read_text() == "local edit\n"
    git(repo, "checkout", "--", "shared.txt")

    done = agents.call("mergeRun", {"runId": run_id, "skipConflicting": True})
    assert done["applied"] and done["merged"] == ["a", "b"], done
    assert done["how"].startswith("fast-forward in")
    assert git(repo, "rev-parse", "main") == done["new"] != old
    assert (repo / "shared.txt").read_text() == "from a\n"  # the checkout moved with it
    assert (repo / "b.txt").read_text() == "from b\n"
    assert git(repo, "status", "--porcelain") == ""
    parents = git(repo, "log", "--first-parent", "--format=%P", f"{old}..main").splitlines()
    assert [len(p.split()) for p in parents] == [2, 2]  # two merge commits
    assert git(repo, "merge-base", "--is-ancestor", branches[0], "main") == ""
    assert all(has_branch(repo, b) for b in branches)  # nothing lost: c's work is still there
    assert git(repo, "show", f"{branches[2]}:shared.txt") == "from c"

    again = agents.call("mergeRun", {"runId": run_id, "skipConflicting": True})
    assert [s["status"] for s in again["steps"]][:2] == ["already-merged", "already-merged"]


def test_squash_into_another_branch_and_a_dry_run_changes_nothing(agents: AgentDaemon) -> None:
    repo = repo_in(agents)
    git(repo, "branch", "integration")
    out = run_tasks(agents, [edit("x", "x.txt", "x"), edit("y", "y.txt", "y"),
                             {"id": "idle", "instruction": "true"}])  # fmt: skip
    assert out["completed"] == 3
    run_id, old = out["runId"], git(repo, "rev-parse", "integration")
    refs = git(repo, "for-each-ref")
    dry = run(["merge", run_id, "--into", "integration", "--squash", "--dry-run", "--json"],
              agents.daemon.env)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert git(repo, "for-each-ref") == refs  # no ref moved, none made

    done = run(["merge", run_id, "--into", "integration", "--squash"], agents.daemon.env)
    assert done.returncode == 0, done.stderr
    assert "merged x, y into integration (update-ref)" in done.stdout
    assert "idle  nothing-to-merge" in done.stdout
    log = git(repo, "log", "--format=%P %s", f"{old}..integration").splitlines()
    assert [len(line.split(" Squash")[0].split()) for line in log] == [1, 1]  # one parent each
    assert git(repo, "show", "integration:x.txt") == "x"
    assert git(repo, "show", "integration:y.txt") == "y"
    assert git(repo, "rev-parse", "main") == old  # the checked-out branch is not the target
    with pytest.raises(InvalidParams, match="into"):
        agents.call("mergeRun", {"runId": run_id, "into": "-rf"})
    spec = agents.spawn("specialist", parent="mgr_1_1", agent="shell")["instanceId"]
    with pytest.raises(Forbidden, match="may not merge"):
        agents.call("mergeRun", {"runId": run_id, "dryRun": True}, token=agents.token(spec))
    mine = agents.call("mergeRun", {"runId": run_id, "into": "integration", "squash": True},
                       token=agents.token("exec_1"))  # fmt: skip
    assert [s["status"] for s in mine["steps"]] == ["already-merged"] * 2 + ["nothing-to-merge"]
    shared = run_tasks(agents, [{"id": "s", "instruction": "true"}], isolation="shared")
    with pytest.raises(InvalidParams, match="isolation=shared"):
        agents.call("mergeRun", {"runId": shared["runId"]})


def test_overlap_is_reported_while_the_tasks_still_run(agents: AgentDaemon) -> None:
    repo = repo_in(agents)
    signal = agents.work_dir.parent / "go"
    hold = f"while [ ! -e {signal} ]; do sleep 0.05; done"
    tasks = [
        {"id": "p", "instruction": f"echo p > same.txt && echo p > p.txt && {hold}"},
        {"id": "q", "instruction": f"echo q > same.txt && echo q >> shared.txt && {hold}"},
    ]
    run_id = run_tasks(agents, tasks, wait=False)["runId"]

    def overlap() -> dict[str, Any] | None:
        st: dict[str, Any] = agents.call("getParallelStatus", {"runId": run_id})
        return st if st["overlap"] else None

    st = wait_until(overlap, 30, 0.2, "the overlap of p and q")
    assert st["overlap"] == [{"path": "same.txt", "taskIds": ["p", "q"]}]
    assert st["activeSpecialists"] == 2  # still running
    rows = {t["taskId"]: t for t in st["tasks"]}
    assert rows["p"]["changedFiles"] == ["p.txt", "same.txt"]
    assert rows["q"]["changedFiles"] == ["same.txt", "shared.txt"]
    events = agents.call("events", {"since": 0})["events"]
    told = [e for e in events if e["kind"] == "run.overlap"]
    assert [(e["runId"], e["path"], e["taskIds"]) for e in told] == [
        (run_id, "same.txt", ["p", "q"])
    ]
    shown = run(["run", run_id], agents.daemon.env)
    assert "same.txt  p, q" in shown.stdout, shown.stdout
    follow = subprocess.Popen(
        [*TCMCTL, "run", run_id, "--follow"],
        env=agents.daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    signal.touch()
    _, err = follow.communicate(timeout=30)
    assert follow.returncode == 0, err
    assert "overlap   same.txt  changed by p, q" in err
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_the_graph_example_runs_and_merges(agents: AgentDaemon, tmp_path: Path) -> None:
    """examples/graph.toml as the README runs it: report runs after primes and squares,
    with their results, and the three branches merge into main."""
    repo = agents.work_dir
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "demo")
    git(repo, "config", "user.email", "demo@example.invalid")
    git(repo, "commit", "-q", "--allow-empty", "-m", "start")
    example = Path(__file__).parents[2] / "examples" / "graph.toml"
    out = run(["distribute", str(example), "--workdir", str(repo), "--wait"], agents.daemon.env)
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = out.stderr.split(":")[0]
    plan = run(["merge", run_id, "--dry-run"], agents.daemon.env)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "dry run: main is untouched" in plan.stdout
    done = run(["merge", run_id], agents.daemon.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (repo / "primes.txt").read_text().split()[:4] == ["2", "3", "5", "7"]
    assert (repo / "squares.txt").read_text().split()[-1] == "100"
    report = (repo / "REPORT.md").read_text()
    assert "primes.txt: 25 primes" in report
    assert "squares.txt: 10 squares" in report
