"""FakeClaude: the main thread's select loop (keys, resizes, timers), start-up and shutdown."""

from __future__ import annotations

import os
import select
import signal
import termios
import time
import tty

from .keys import Keys


class FakeClaude(Keys):
    """One interactive session: screen, input, turns and hooks (see the package docstring)."""

    def tick(self) -> None:
        self.call_later(0.2, self.tick)
        if self.working:
            self.redraw()

    def become_ready(self) -> None:
        self.ready = True
        self.write("\x1b[?2004h")
        self.tick()
        self.spawn(self.start_session)

    def start_session(self) -> None:
        self.fire("SessionStart", source="resume" if self.resumed else "startup", model=self.model)
        if self.opts["prompt"]:
            self.text = self.opts["prompt"]
            self.enter()
            self.redraw()

    def on_hangup(self, signum: int, frame: object) -> None:
        """The pane is killed: write what the transcript writer holds (Claude Code's last
        message of a turn reaches its transcript even when its session is killed right
        after the Stop hook), then die of the signal as before."""
        with self.cond:
            self.flush_entries()
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGHUP)

    def on_resize(self, signum: int, frame: object) -> None:
        self.resized = True  # the wakeup fd wakes the main loop, which redraws

    def serve(self) -> int:
        """Read keys, redraw on a resize and run timers until the session ends."""
        while self.exit_code is None:
            with self.cond:
                due = min((t[0] for t in self.timers), default=None)
            timeout = None if due is None else max(0.0, due - time.monotonic())
            fds = [0, self.wake_r] if self.reading else [self.wake_r]
            ready = select.select(fds, [], [], timeout)[0]
            with self.cond:
                if self.wake_r in ready:
                    os.read(self.wake_r, 512)
                if self.resized:
                    self.resized = False
                    self.redraw()
                if 0 in ready:
                    self.on_input()
                self.run_due_timers()
                self.cond.notify_all()  # a key may be what a Task waits for (a dialog answer)
        return self.exit_code

    def run(self) -> int:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        saved = termios.tcgetattr(0) if os.isatty(0) else None
        if saved:
            tty.setraw(0, termios.TCSANOW)  # TCSANOW: keep bytes already typed
        try:
            with self.cond:
                self.emit(
                    f"✻ Fake Claude Code (session {self.session_id})",
                    f"  {self.model} · {os.getcwd()}",
                )
                if self.resumed:
                    turns = self.prior_turns()
                    self.emit(f"Resumed conversation ({len(turns)} prior turns)")
                    for turn in turns:
                        first = next((x for x in turn["prompt"].split("\n") if x.strip()), "")
                        self.emit("", "> " + first, "⏺ " + turn.get("reply", ""))
                signal.set_wakeup_fd(self.wake_w)
                signal.signal(signal.SIGWINCH, self.on_resize)
                signal.signal(signal.SIGHUP, self.on_hangup)
                self.call_later(self.start_s, self.become_ready)
            return self.serve()
        finally:
            with self.cond:
                self.flush_entries()  # what the transcript writer still held (before the
                self.redraw()  # screen, which raises once the pane is gone)
                self.closed = True
                for task in self.tasks:  # as asyncio.run cancels what is left
                    task.cancelled = True
                self.cond.notify_all()
                self.write("\x1b[?2004l\r\n")
            if saved:
                termios.tcsetattr(0, termios.TCSADRAIN, saved)
