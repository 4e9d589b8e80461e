"""The ``top`` screen: the tree, the selected instance's screen, the work, and the keys.

Fed by the event stream (feed.follow in a thread): an instance's state or verdict is
changed in place the moment its event arrives; everything else is taken again in one
snapshot shortly after (at most one fetch at a time, news during a fetch asks for one
more). Only the selected instance's screen is read, once a second while it lives.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Static

from tcmctl import overview
from tcmctl.client import DaemonUnreachable
from tcmctl.top import panels
from tcmctl.top.dialogs import Ask, Confirm
from tcmctl.top.feed import Daemon, Snapshot, follow
from tcmd.errors import TcmError

COLUMNS = [("id", "INSTANCE"), ("state", "STATE"), ("age", "IN STATE")]
COLUMNS += [("health", "HEALTH"), ("mem", "MEM"), ("doing", "DOING")]
RESYNC_AFTER_S = 0.15  # gather a burst of events into one snapshot
RESYNC_GAP_S = 0.5  # and no more than two a second: a busy run must not load tcmd
IDLE_RESYNC_S = 5.0  # the store's health and counters have no events of their own
PREVIEW_LINES = 5
GONE = ("terminated", "exited")
KEYS = "a attach  s send  r restart  t terminate  c cancel run  / filter  q quit"

CSS = """
#daemon, #keys, #preview-title { height: 1; }
#tree { height: 1fr; }
#preview { height: PREVIEW; }
#work { height: 3; }
App.-plain DataTable > .datatable--cursor { text-style: reverse; }
""".replace("PREVIEW", str(PREVIEW_LINES))


class TopApp(App[None]):
    """tcmctl top."""

    CSS = CSS
    TITLE = "tcm top"
    BINDINGS = [  # noqa: RUF012 (Textual's declaration style)
        ("a", "attach", "attach"),
        ("s", "send", "send"),
        ("r", "restart", "restart"),
        ("t", "terminate", "terminate"),
        ("c", "cancel_run", "cancel run"),
        ("slash", "filter", "filter"),
        ("q", "quit", "quit"),
    ]

    def __init__(self, daemon: Daemon, tmux_socket: str, *, plain: bool) -> None:
        super().__init__(ansi_color=plain or None)
        self.daemon = daemon
        self.tmux_socket = tmux_socket
        self.plain = plain
        self.snap = Snapshot()
        self.roots: list[overview.Node] = []
        self.nodes: dict[str, overview.Node] = {}
        self.shown: list[str] = []
        self.columns: list[str] = []
        self.selected: str | None = None
        self.filter_text = ""
        self.linked = True
        self._fetching = self._again = False
        self._fetched_at = 0.0  # when the last snapshot was asked for (monotonic)
        self._resync_timer: Any = None
        self._stop = threading.Event()

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static("tcmd …", id="daemon", markup=False)
        table: DataTable[Text] = DataTable(id="tree", cursor_type="row", zebra_stripes=False)
        yield table
        yield Static("", id="preview-title", markup=False)
        yield Static("", id="preview", markup=False)
        yield Static("", id="work", markup=False)
        yield Static(KEYS, id="keys", markup=False)

    def on_mount(self) -> None:
        if self.plain:
            self.add_class("-plain")
        self.query_one("#tree", DataTable).focus()
        self.resync()
        self.set_interval(1.0, self._tick)
        self.set_interval(IDLE_RESYNC_S, self.resync)
        threading.Thread(target=self._follow, name="tcm-top-events", daemon=True).start()

    def on_unmount(self) -> None:
        self._stop.set()

    # -- data in -----------------------------------------------------------------------------
    def _follow(self) -> None:
        follow(
            self.daemon,
            lambda events: self.call_from_thread(self.apply_events, events),
            lambda up: self.call_from_thread(self.set_link, up),
            self._stop,
        )

    def set_link(self, up: bool) -> None:
        self.linked = up
        self._draw_daemon_line()
        if up:
            self.resync()

    def apply_events(self, events: list[dict[str, Any]]) -> None:
        """Move what an event says at once; ask for a snapshot for the rest."""
        structural = False
        touched: set[str] = set()
        for e in events:
            node = self.nodes.get(str(e.get("instanceId")))
            if e["kind"] == "instance.state" and node is not None and e["new"] not in GONE:
                node.row["status"], node.row["stateSince"] = e["new"], e["time"]
            elif e["kind"] == "health.verdict" and node is not None:
                node.verdict, node.score = e.get("verdict"), e.get("score")
            else:
                structural = True
                continue
            touched.add(node.id)
        self._draw_tree(touched)
        self._draw_daemon_line()
        if structural:
            self._resync_soon()
        if any(e.get("instanceId") == self.selected for e in events):
            self._read_preview()

    def _resync_soon(self) -> None:
        if self._resync_timer is None:
            gap = self._fetched_at + RESYNC_GAP_S - time.monotonic()
            self._resync_timer = self.set_timer(max(RESYNC_AFTER_S, gap), self.resync)

    def resync(self) -> None:
        """Take a fresh snapshot in a thread (one at a time; asked again: once more)."""
        self._resync_timer = None
        if self._fetching:
            self._again = True
            return
        self._fetching, self._fetched_at = True, time.monotonic()
        self.run_worker(self._fetch, thread=True, group="fetch")

    def _fetch(self) -> None:
        try:
            snap: Snapshot | None = self.daemon.snapshot()
        except (DaemonUnreachable, TcmError):
            snap = None
        self.call_from_thread(self._apply_snapshot, snap)

    def _apply_snapshot(self, snap: Snapshot | None) -> None:
        self._fetching = False
        if snap is not None:
            self.snap = snap
            self.roots = snap.tree()
            self.nodes = {n.id: n for _, n in overview.walk(self.roots)}
            self._draw_all()
        if self._again:
            self._again = False
            self.resync()

    # -- drawing -----------------------------------------------------------------------------
    def _draw_all(self) -> None:
        self._draw_daemon_line()
        self._draw_tree()
        work = [panels.queue_line(self.snap), panels.runs_line(self.snap, self.size.width)]
        work.append(panels.throughput_line(self.snap))
        self.query_one("#work", Static).update(Text("\n".join(work), no_wrap=True))

    def _draw_daemon_line(self) -> None:
        line = panels.daemon_line(self.snap, self.linked)
        if self.filter_text:
            line += f"  filter: {self.filter_text}"
        self.query_one("#daemon", Static).update(Text(line, no_wrap=True))

    def _visible(self) -> list[tuple[int, overview.Node]]:
        rows = overview.walk(self.roots)
        needle = self.filter_text.lower()
        if not needle:
            return list(rows)
        now = time.time()
        return [(d, n) for d, n in rows if needle in " ".join(overview.cells(0, n, now)).lower()]

    def _draw_tree(self, only: set[str] | None = None) -> None:
        """Rebuild the rows when the set of rows changed, else update the cells of
        ``only`` (those instances; None: every row)."""
        table: DataTable[Text] = self.query_one("#tree", DataTable)
        now = time.time()
        visible = self._visible()
        columns = [k for k, _ in COLUMNS if k != "mem" or self._has_memory()]
        if columns != self.columns:  # MEM shows once the daemon reports memory
            table.clear(columns=True)
            for key, label in COLUMNS:
                if key in columns:
                    table.add_column(label, key=key)
            self.columns, self.shown = columns, []
        ids = [n.id for _, n in visible]
        if ids != self.shown:
            table.clear()
            for depth, node in visible:
                table.add_row(*self._cells(depth, node, now).values(), key=node.id)
            self.shown = ids
            if self.selected in ids:
                table.move_cursor(row=ids.index(self.selected))
            return
        for depth, node in visible:
            if only is not None and node.id not in only:
                continue
            for key, value in self._cells(depth, node, now).items():
                table.update_cell(node.id, key, value)

    def _cells(self, depth: int, node: overview.Node, now: float) -> dict[str, Text]:
        cells = zip(COLUMNS, overview.cells(depth, node, now), strict=True)
        return {key: Text(value) for (key, _), value in cells if key in self.columns}

    def _has_memory(self) -> bool:
        return any(overview.memory(n.row) for n in self.nodes.values())

    def _tick(self) -> None:
        """Time in state goes on between events."""
        table: DataTable[Text] = self.query_one("#tree", DataTable)
        now = time.time()
        for iid in self.shown:
            node = self.nodes.get(iid)
            if node is not None:
                table.update_cell(iid, "age", Text(overview.age(node.time_in_state_s(now))))
        node = self.nodes.get(self.selected or "")
        if node is not None and node.row.get("status") not in GONE:
            self._read_preview()

    # -- the selected instance ---------------------------------------------------------------
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.selected = event.row_key.value
        self._read_preview()

    def _read_preview(self) -> None:
        if self.selected is not None:
            self.run_worker(lambda: self._read(self.selected), thread=True, group="preview")

    def _read(self, iid: str | None) -> None:
        if iid is None:
            return
        try:
            r = self.daemon.call("read", {"instanceId": iid, "lines": PREVIEW_LINES})
            title, text = f"── {iid} ({r['status']})", str(r.get("output", "")).rstrip("\n")
        except (DaemonUnreachable, TcmError) as exc:
            title, text = f"── {iid}", exc.message
        self.call_from_thread(self._show_preview, iid, title, text)

    def _show_preview(self, iid: str, title: str, text: str) -> None:
        if iid != self.selected:
            return
        lines = text.splitlines()[-PREVIEW_LINES:]
        self.query_one("#preview-title", Static).update(Text(title, no_wrap=True))
        self.query_one("#preview", Static).update(Text("\n".join(lines), no_wrap=True))

    # -- keys --------------------------------------------------------------------------------
    def action_attach(self) -> None:
        """The real tmux pane of the selected instance; back to top on detach."""
        if self.selected is None:
            return
        argv = ["tmux", "-L", self.tmux_socket, "attach-session", "-t", f"={self.selected}"]
        env = {k: v for k, v in os.environ.items() if k != "TMUX"}  # attach from inside tmux
        with self.suspend():
            subprocess.run(argv, env=env, check=False)
        self.resync()

    def action_send(self) -> None:
        iid = self.selected
        if iid is None:
            return

        def sent(text: str | None) -> None:
            if text:
                self._call(f"sent to {iid}", "send", {"instanceId": iid, "text": text})

        self.push_screen(Ask(f"Send a line to {iid} (Enter sends, Esc cancels):"), sent)

    def action_restart(self) -> None:
        iid = self.selected
        if iid is not None:
            self._confirmed(f"Restart {iid}?", f"restarted {iid}", "restart", {"instanceId": iid})

    def action_terminate(self) -> None:
        iid = self.selected
        if iid is None:
            return
        below = sum(1 for _ in overview.walk(self.nodes[iid].children)) if iid in self.nodes else 0
        question = f"Terminate {iid}" + (f" and its {below} descendants?" if below else "?")
        params: dict[str, Any] = {"instanceId": iid, "cascade": bool(below)}
        self._confirmed(question, f"terminated {iid}", "terminate", params)

    def action_cancel_run(self) -> None:
        node = self.nodes.get(self.selected or "")
        run_id = node.task.get("runId") if node is not None and node.task else None
        if run_id is None:
            unfinished = [r for r in panels.runs(self.snap) if not r["finished"]]
            run_id = unfinished[0]["runId"] if unfinished else None
        if run_id is None:
            self.notify("no unfinished run to cancel")
            return
        self._confirmed(f"Cancel run {run_id}?", f"cancelled {run_id}", "cancel", {"runId": run_id})

    def action_filter(self) -> None:
        def chosen(text: str | None) -> None:
            if text is not None:
                self.filter_text = text.strip()
                self._draw_all()

        ask = Ask("Filter (id, state, health, task; empty shows all):", self.filter_text)
        self.push_screen(ask, chosen)

    def _confirmed(self, question: str, done: str, method: str, params: dict[str, Any]) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._call(done, method, params)

        self.push_screen(Confirm(question), answered)

    def _call(self, done: str, method: str, params: dict[str, Any]) -> None:
        """Call the daemon off the screen's thread; say how it went."""

        def work() -> None:
            try:
                self.daemon.call(method, params)
            except (DaemonUnreachable, TcmError) as exc:
                self.call_from_thread(self.notify, exc.message, severity="error")
                return
            self.call_from_thread(self.notify, done)

        self.run_worker(work, thread=True, group="calls")


def run_top(socket_path: Path, tmux_socket: str) -> None:
    """Run the screen until q."""
    TopApp(Daemon(socket_path), tmux_socket, plain="NO_COLOR" in os.environ).run()
