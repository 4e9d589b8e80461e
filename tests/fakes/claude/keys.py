"""Keys: raw terminal input, bracketed paste, Enter/Escape/Ctrl-C and the permission dialog."""

from __future__ import annotations

import os
import re
import time

from .screen import OPTIONS
from .turns import Turns

PASTE_MAX_CHARS, PASTE_MAX_LINES = 800, 3
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"
ESC_SEQ = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|O.)")
ESC_PARTIAL = re.compile(r"\x1b(\[[0-?]*[ -/]*|O)?")
CONTROL_KEYS = {"\r": "enter", "\x7f": "backspace", "\x08": "backspace", "\x03": "ctrl-c"}


def clean_paste(text: str) -> str:
    text = text.replace("\r", "\n").replace("\t", "    ")
    return "".join(ch for ch in text if ch == "\n" or (ch >= " " and ch != "\x7f"))


class Keys(Turns):
    """Turns stdin's bytes into keys and acts on them (before ready, only text lands)."""

    def on_input(self) -> None:
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        if not data:  # the terminal went away
            self.reading = False
            self.finish(0)
            return
        self.cancel_timer(self.esc_timer)
        self.inbuf += self.decoder.decode(data)  # incremental: reads may split a character
        self.parse()
        if self.inbuf.startswith("\x1b") and self.paste is None:  # lone Escape or a slow CSI
            self.esc_timer = self.call_later(0.05, self.flush_escape)
        self.redraw()

    def flush_escape(self) -> None:
        self.inbuf = self.inbuf[1:]
        self.key("esc")
        self.parse()
        self.redraw()

    def parse(self) -> None:
        buf, i = self.inbuf, 0
        while i < len(buf):
            if self.paste is not None:
                end = buf.find(PASTE_END, i)
                if end < 0:  # keep a possibly split end marker for the next read
                    keep = next(
                        (
                            k
                            for k in range(len(PASTE_END) - 1, 0, -1)
                            if buf.endswith(PASTE_END[:k])
                        ),
                        0,
                    )
                    self.paste += buf[i : len(buf) - keep]
                    i = len(buf) - keep
                    break
                text, self.paste, i = self.paste + buf[i:end], None, end + len(PASTE_END)
                self.key("paste", clean_paste(text))
                continue
            ch = buf[i]
            if ch == "\x1b":
                m = ESC_SEQ.match(buf, i)
                if m:
                    i = m.end()
                    if m.group() == PASTE_START:
                        self.paste = ""
                    elif m.group() in ("\x1b[A", "\x1b[B"):
                        self.key("up" if m.group() == "\x1b[A" else "down")
                    continue
                if ESC_PARTIAL.fullmatch(buf, i):
                    break  # wait for the rest (or the Escape timeout)
                self.key("esc")
            elif ch in CONTROL_KEYS:
                self.key(CONTROL_KEYS[ch])
            elif ch in "\t\n" or ch >= " ":
                self.key("text", ch.replace("\t", "    "))
            i += 1
        self.inbuf = buf[i:]

    def key(self, kind: str, text: str = "") -> None:
        if not self.ready:  # drawn into the box, but Enter (and everything else) is lost
            if kind == "text":
                self.text += text
        elif self.dialog is not None:
            self.dialog_key(kind, text)
        elif kind == "text":
            self.text += text
        elif kind == "paste":
            self.insert_paste(text)
        elif kind == "backspace":
            ref = next((r for r in self.pastes if self.text.endswith(r)), None)
            self.text = self.text[: -len(ref)] if ref else self.text[:-1]
        elif kind == "enter":
            self.enter()
        elif kind == "esc" and self.working and self.turn:
            self.turn.cancel()
        elif kind == "ctrl-c":
            self.ctrl_c()

    def insert_paste(self, text: str) -> None:
        if len(text) > PASTE_MAX_CHARS or len(text.splitlines()) > PASTE_MAX_LINES:
            n, lines = len(self.pastes) + 1, text.count("\n")
            ref = f"[Pasted text #{n} +{lines} lines]" if lines else f"[Pasted text #{n}]"
            self.pastes[ref] = text
            text = ref
        self.text += text

    def expand(self, text: str, wrapped: bool) -> str:
        for n, (ref, pasted) in enumerate(self.pastes.items(), 1):
            tag = f'pasted_content id="{n}"'
            text = text.replace(ref, f"\n\n<{tag}>\n{pasted}\n</{tag}>" if wrapped else pasted)
        return text

    def enter(self) -> None:
        if self.text.endswith("\\"):  # backslash + Enter inserts a newline, as in Claude
            self.text = self.text[:-1] + "\n"
            return
        if not self.text.strip():
            return
        text = self.text.removesuffix("\n")
        item = (self.expand(text, False), self.expand(text, True), text)
        self.text, self.pastes = "", {}
        if self.turn:
            self.queue.append(item)
        else:
            self.start_turn(item)

    def ctrl_c(self) -> None:
        now = time.monotonic()
        if self.turn:
            if self.working:
                self.turn.cancel()
        elif self.text:
            self.text, self.pastes = "", {}
        elif now - self.ctrl_c_at < 2:
            self.spawn(self.end_session)
        else:
            self.ctrl_c_at = now
            self.call_later(2.05, self.redraw)

    def dialog_key(self, kind: str, text: str) -> None:
        assert self.dialog is not None
        if self.dialog[1] is not None:
            return
        if kind == "text" and text in ("1", "2", "3"):
            self.dialog[1] = int(text) - 1
        elif kind == "enter":
            self.dialog[1] = self.dialog[0]
        elif kind == "esc":
            self.dialog[1] = 2
        elif kind in ("up", "down"):
            self.dialog[0] = (self.dialog[0] + (1 if kind == "down" else -1)) % len(OPTIONS)
        elif kind == "ctrl-c" and self.turn:
            self.turn.cancel()
