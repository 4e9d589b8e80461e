"""Human output of tcmctl: aligned tables and key/value blocks. Machine output is --json."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    text = str(value)
    return text.replace("\n", "⏎")


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], *, max_width: int = 60) -> str:
    """Rows under upper-case headers, each column as wide as its widest cell (capped)."""
    grid = [[c.upper() for c in columns]]
    for row in rows:
        cells = [cell(row.get(c)) for c in columns]
        grid.append([c if len(c) <= max_width else c[: max_width - 1] + "…" for c in cells])
    if len(grid) == 1:
        return "(none)"
    widths = [max(len(r[i]) for r in grid) for i in range(len(columns))]
    return "\n".join(
        "  ".join(r[i].ljust(widths[i]) for i in range(len(columns))).rstrip() for r in grid
    )


def pairs(items: Iterable[tuple[str, Any]]) -> str:
    items = list(items)
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{k.ljust(width)}  {cell(v)}" for k, v in items)


def duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def status(st: Mapping[str, Any]) -> str:
    store = st.get("store", {})
    store_text = f"{store.get('backend')} {'ok' if store.get('ok') else 'FAILING'}"
    if store.get("lastError"):
        store_text += f" ({store['lastError']})"
    counts = " ".join(f"{k}={v}" for k, v in sorted(st.get("counts", {}).items()))
    head = f"{st.get('version')}  up {duration(st.get('uptimeS', 0))}"
    if "pid" in st:  # the operator's view; an instance sees version, uptime, its counts
        head = f"{st.get('version')}  pid {st['pid']}  up {duration(st.get('uptimeS', 0))}"
        head += f"  boots {st.get('boots')}"
    rows: list[tuple[str, Any]] = [("tcmd", head)]
    if "socket" in st:
        rows += [("socket", st["socket"]), ("state", st.get("stateDir")), ("store", store_text)]
    return pairs([*rows, ("counts", counts)])
