"""Screen: the permanent transcript lines and the redrawable spinner, input box and footer."""

from __future__ import annotations

import os
import sys
import time
import unicodedata

from .state import Session

SPINNER = "·✢✳✶✻✽"
OPTIONS = ("Yes", "Yes, and don't ask again", "No")


def wrap(text: str, width: int) -> list[str]:
    """Split one line into pieces of at most `width` terminal cells (at least one piece)."""
    pieces, cur, used = [], "", 0
    for ch in text:
        w = 0 if unicodedata.combining(ch) else 1 + (unicodedata.east_asian_width(ch) in "WF")
        if used + w > width:
            pieces.append(cur)
            cur, used = "", 0
        cur += ch
        used += w
    return [*pieces, cur]


class Screen(Session):
    """What the session shows: no alternate screen, only the bottom area is redrawn."""

    def write(self, data: str) -> None:
        sys.stdout.buffer.write(data.encode())
        sys.stdout.buffer.flush()

    def emit(self, *lines: str) -> None:
        """Add permanent output lines above the input box."""
        for line in lines:
            self.pending += line.split("\n")
            self.history += line.split("\n")
        self.redraw()

    def bottom(self, width: int) -> list[str]:
        rows = []
        if self.working:
            secs = time.monotonic() - self.turn_t0
            spin = SPINNER[int(secs / 0.2) % len(SPINNER)]
            rows += ["", f"{spin} Working… ({int(secs)}s · esc to interrupt)"]
        rows += ["  (queued) " + queued.split("\n")[0] for queued, _, _ in self.queue]
        rows.append("─" * width)
        if self.dialog is not None:
            rows += [" Bash command", "   echo fake", " Do you want to proceed?"]
            rows += [
                f"{'❯' if i == self.dialog[0] else ' '} {i + 1}. {opt}"
                for i, opt in enumerate(OPTIONS)
            ]
        else:
            for n, line in enumerate(self.text.split("\n")):
                rows += [
                    ("❯ " if n == 0 and k == 0 else "  ") + piece
                    for k, piece in enumerate(wrap(line, width - 2))
                ]
        rows.append("─" * width)
        if time.monotonic() - self.ctrl_c_at < 2:
            rows.append("  Press Ctrl-C again to exit")
        elif not self.turn:  # not while busy, nor while the Stop hooks run
            rows.append("  ? for shortcuts")
        return [wrap(row, width)[0] for row in rows]

    def redraw(self) -> None:
        """Erase the bottom area, write pending permanent lines, draw the bottom area."""
        if self.closed:
            return
        cols = os.get_terminal_size(1).columns if os.isatty(1) else 200
        out, lines = [], self.pending
        if self.drawn and cols != self.cols:  # resized: tmux rewrapped old rows; repaint all
            out.append("\x1b[H\x1b[2J\x1b[3J")
            lines = self.history
        elif self.drawn:
            out.append("\r" + (f"\x1b[{self.drawn - 1}A" if self.drawn > 1 else "") + "\x1b[J")
        out += [line + "\r\n" for line in lines]
        self.pending = []
        rows = self.bottom(max(20, cols - 1))
        self.drawn, self.cols = len(rows), cols
        self.write("".join(out) + "\r\n".join(rows))
