"""Runtime: Tasks (threads that wait under the session's lock), timers and the exit status."""

from __future__ import annotations

import os
import sys
import threading
import time

from .screen import Screen

TYPE_CHECKING = False  # not `from typing import ...`: importing typing costs a start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class Cancelled(Exception):
    """Raised in a task at its next wait once it is cancelled (Escape, Ctrl-C, the end)."""


class Task(threading.Thread):
    """A turn or another job that waits: it runs holding the fake's lock, which only its
    waits (``Runtime.wait``) release; ``cancel`` makes the current or next wait raise."""

    def __init__(self, fake: Runtime, job: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fake, self.job, self.cancelled = fake, job, False

    def cancel(self) -> None:
        with self.fake.cond:
            self.cancelled = True
            self.fake.cond.notify_all()

    def run(self) -> None:
        fake = self.fake
        with fake.cond:
            try:
                self.job()
            except Cancelled:
                pass
            except Exception as exc:
                if not fake.closed:
                    sys.stderr.write(f"[fake-claude] task failed: {exc!r}\r\n")
                    fake.finish(70)
            finally:
                fake.tasks.discard(self)


class Runtime(Screen):
    """Starts and waits in Tasks, keeps the main thread's timers, ends the session."""

    def spawn(self, job: Callable[[], object]) -> Task:
        task = Task(self, job)
        self.tasks.add(task)
        task.start()  # it runs once the caller lets the lock go
        return task

    def wait(self, until: Callable[[], bool] = lambda: False, timeout: float | None = None) -> None:
        """In a Task: give the lock up until ``until()`` holds or ``timeout`` s pass.

        Raises Cancelled once the task is cancelled, like an await in asyncio would.
        """
        task = threading.current_thread()
        assert isinstance(task, Task)
        self.cond.wait_for(lambda: task.cancelled or until(), timeout)
        if task.cancelled:
            raise Cancelled

    def finish(self, code: int) -> None:
        """End the session with exit status ``code`` (the first one given wins)."""
        if self.exit_code is None:
            self.exit_code = code
            os.write(self.wake_w, b"x")

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> list[Any]:
        timer = [time.monotonic() + delay_s, callback]
        self.timers.append(timer)
        return timer

    def cancel_timer(self, timer: list[Any] | None) -> None:
        if timer in self.timers:
            self.timers.remove(timer)

    def run_due_timers(self) -> None:
        now = time.monotonic()
        for timer in sorted((t for t in self.timers if t[0] <= now), key=lambda t: t[0]):
            if timer in self.timers:  # an earlier callback may have cancelled it
                self.timers.remove(timer)
                timer[1]()
