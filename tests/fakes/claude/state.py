"""Session: every field of one fake Claude session, set from its flags and environment."""

from __future__ import annotations

import codecs
import os
import threading

from .flags import load_json, number

TYPE_CHECKING = False  # not `from typing import ...`: importing typing costs a start-up
if TYPE_CHECKING:
    from typing import Any

    from .tasks import Task


class Session:
    """One interactive session's state; the layers above add what it does.

    Threads, not asyncio (importing asyncio would triple the start-up time, and tests
    start hundreds of these): the main thread reads keys and runs timers, each turn and
    each other waiting job is a Task, each hook command a thread. All of them hold
    ``cond`` (one lock) while they touch the session, so the code reads as if it were one
    thread, and a Task gives the lock up only where it waits.
    """

    def __init__(self, opts: dict[str, Any], session_id: str, transcript: str) -> None:
        self.opts = opts
        self.session_id = session_id
        self.transcript = transcript
        self.resumed = bool(opts.get("resume"))
        settings = load_json(opts["settings"], "settings") if opts.get("settings") else {}
        self.hooks: dict[str, Any] = settings.get("hooks") or {}
        self.model = opts.get("model") or "claude-sonnet-4-5"
        mode = opts.get("permission-mode") or (
            "bypassPermissions" if opts.get("dangerously-skip-permissions") else "default"
        )
        self.mode = "default" if mode == "manual" else mode
        self.verbose = bool(opts.get("verbose"))
        self.event_log = os.environ.get("FAKE_CLAUDE_EVENT_LOG")
        self.start_s = number(os.environ.get("FAKE_CLAUDE_START_MS", ""), 150) / 1000
        self.notify_s = number(os.environ.get("FAKE_CLAUDE_NOTIFY_DELAY_MS", ""), 1000) / 1000
        # transcript entries are written in batches, this long after the first of a batch
        # (Claude Code's own writer flushes after the Stop hook has gone out)
        self.flush_s = number(os.environ.get("FAKE_CLAUDE_FLUSH_MS", ""), 100) / 1000
        self.unwritten: list[str] = []  # transcript lines waiting for the flush
        # screen
        self.pending: list[str] = []  # permanent lines not yet written
        self.history: list[str] = []  # every permanent line, to repaint after a resize
        self.drawn = 0  # rows of the redrawable bottom area now on screen
        self.cols = 0  # terminal width at the last draw
        self.closed = False
        # input
        self.ready = False
        self.inbuf = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.paste: str | None = None  # inside a bracketed paste: its text so far
        self.esc_timer: list[Any] | None = None
        self.text = ""
        self.pastes: dict[str, str] = {}  # placeholder shown in the box -> pasted text
        self.ctrl_c_at = -10.0
        # turns
        self.turn: Task | None = None
        self.working = False  # spinner shown; Escape interrupts
        self.turn_t0 = 0.0
        self.messages_written = 0  # assistant messages of this turn in the transcript
        self.queue: list[tuple[str, str, str]] = []  # (raw, prompt, display)
        self.ballast: list[bytes] = []  # memory `@grow` took, held until the process ends
        self.dialog: list[Any] | None = None  # [selected option, chosen option or None]
        self.tasks: set[Task] = set()
        # threads and the main loop
        self.cond = threading.Condition(threading.RLock())
        self.timers: list[list[Any]] = []  # [due (monotonic), callback]
        self.wake_r = self.wake_w = -1  # a pipe that wakes the main loop: an exit, a signal
        self.reading = True  # stdin still open
        self.resized = False
        self.exit_code: int | None = None
