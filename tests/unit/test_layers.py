"""The import rules of docs/architecture.md, checked over every module's source.

server → domain packages → shared ground, and nothing imports the server. Among the domain
packages, ``instances`` is the base the others build on. ``tcmctl`` (the thin clients) may
use only the part of the ground written for clients. Every import counts: top level, inside
functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = ("instances", "work", "health", "observe", "usage")
# domain package -> the other domain packages it may import
DOMAIN_USES: dict[str, set[str]] = {
    "instances": set(),
    "work": {"instances", "usage"},
    "health": {"instances"},
    "observe": {"instances"},
    "usage": set(),
}
# what the thin clients may import of tcmd: framing, errors, default paths, atomic writes
CLIENT_GROUND = {"tcmd", "tcmd.protocol", "tcmd.errors", "tcmd.paths", "tcmd.atomic"}
# the one tcmctl module tcmd may import: agent settings run its hook client
TCMD_USES_CLIENT = {"tcmctl.hook"}


def layer(module: str) -> str:
    """``server``, a domain package's name, ``ground``, or ``client``."""
    parts = module.split(".")
    if parts[0] == "tcmctl":
        return "client"
    if len(parts) > 1 and parts[1] in ("server", "__main__"):  # `python -m tcmd` starts it
        return "server"
    if len(parts) > 1 and parts[1] in DOMAINS:
        return parts[1]
    return "ground"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``path``, relative ones resolved."""
    found: list[tuple[int, str]] = []
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from tcmd.work import worktrees` imports the module tcmd.work.worktrees
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if (ROOT / module_path(sub)).exists() else base))
    return [(line, name) for line, name in found if name.split(".")[0] in ("tcmd", "tcmctl")]


def module_path(module: str) -> str:
    as_path = module.replace(".", "/")
    return f"{as_path}.py" if not (ROOT / as_path).is_dir() else f"{as_path}/__init__.py"


def violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``, or None when it may."""
    src, dst = layer(importer), layer(imported)
    if src == "client":
        if dst == "client" or imported in CLIENT_GROUND:
            return None
        return "tcmctl may import only tcmd's client ground " + ", ".join(sorted(CLIENT_GROUND))
    if dst == "client":
        return None if imported in TCMD_USES_CLIENT else "tcmd may import only tcmctl.hook"
    if src in (dst, "server") or dst == "ground":
        return None
    if dst == "server":
        return "nothing outside tcmd.server imports the server"
    if src == "ground":
        return f"the shared ground imports no domain package (found {dst})"
    if dst not in DOMAIN_USES[src]:
        return f"tcmd.{src} may import only {sorted(DOMAIN_USES[src]) or 'no other domain'}"
    return None


def all_violations() -> list[str]:
    out = []
    for path in sorted([*ROOT.glob("tcmd/**/*.py"), *ROOT.glob("tcmctl/**/*.py")]):
        importer = module_name(path)
        for line, imported in imports_of(path):
            why = violation(importer, imported)
            if why:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {imported}: {why}")
    return out


def test_every_import_follows_the_layers() -> None:
    assert all_violations() == []


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in [*ROOT.glob("tcmd/**/*.py"), *ROOT.glob("tcmctl/**/*.py")]:
        graph[module_name(path)] = {name for _, name in imports_of(path)}
    return graph


def test_no_module_imports_itself_through_a_circle() -> None:
    graph = import_graph()
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str], on_stack: set[str], done: set[str]) -> None:
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_stack:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, stack, on_stack, done)
        on_stack.discard(stack.pop())
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [], set(), done)
    assert [" -> ".join(c) for c in cycles] == []


@pytest.mark.parametrize(
    ("importer", "imported", "rule"),
    [
        ("tcmd.instances.registry", "tcmd.server.rpc", "nothing outside tcmd.server"),
        ("tcmd.config", "tcmd.health.patterns", "the shared ground imports no domain"),
        ("tcmd.instances.delivery", "tcmd.work.dispatcher", "tcmd.instances may import only"),
        ("tcmd.health.loop", "tcmd.observe.events", "tcmd.health may import only"),
        ("tcmctl.cli", "tcmd.model", "tcmctl may import only"),
        ("tcmd.work.tools", "tcmctl.cli", "tcmd may import only tcmctl.hook"),
    ],
)
def test_the_checker_names_each_kind_of_forbidden_import(
    importer: str, imported: str, rule: str
) -> None:
    why = violation(importer, imported)
    assert why is not None and why.startswith(rule)


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("tcmd.server.daemon", "tcmd.work.dispatcher"),
        ("tcmd.work.dispatcher", "tcmd.instances.delivery"),
        ("tcmd.instances.registry", "tcmd.tmux"),
        ("tcmctl.client", "tcmd.protocol"),
        ("tcmd.instances.agents.claude", "tcmctl.hook"),
    ],
)
def test_the_checker_allows_the_documented_directions(importer: str, imported: str) -> None:
    assert violation(importer, imported) is None
