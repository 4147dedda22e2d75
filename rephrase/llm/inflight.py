"""The LLM stage's requests between submit and judging."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Generic, TypeVar

Request = TypeVar("Request")  # the stage's own record of what a future answers; carried through untouched


class InFlight(Generic[Request]):
    """A task's requests between submit and judging. Engines settle futures on their own thread; a callback
    queues each settled request, so the stage takes what is back in O(1), knows how many are still generating,
    and counts the seconds during which the engine held any of them (`generate_seconds`)."""

    def __init__(self) -> None:
        self.generating = 0  # submitted, not settled
        self.unjudged = 0  # submitted, not taken by the stage
        self.busy_seconds = 0.0
        self._since = 0.0
        self._lock = threading.Lock()
        self._settled: queue.SimpleQueue[tuple[Request, Future]] = queue.SimpleQueue()

    def add(self, request: Request, future: Future) -> None:
        with self._lock:
            if not self.generating:
                self._since = time.perf_counter()
            self.generating += 1
        self.unjudged += 1
        future.add_done_callback(lambda done: self._settle(request, done))

    def _settle(self, request: Request, future: Future) -> None:
        with self._lock:
            self.generating -= 1
            if not self.generating:
                self.busy_seconds += time.perf_counter() - self._since
        self._settled.put((request, future))

    def take(self, stall_s: float | None = None) -> list[tuple[Request, Future]]:
        """Wait for the next settled request, then take every other one settled by now. Engines settle every
        future, on a dead engine too; `stall_s` is the backstop for one that hangs: a TimeoutError when nothing
        comes back for that long."""
        try:
            taken = [self._settled.get(timeout=stall_s)]
        except queue.Empty:
            raise TimeoutError(
                f"no request came back from the engine in {stall_s:.0f} s with {self.generating} generating: "
                "the engine is hung"
            ) from None
        while True:
            try:
                taken.append(self._settled.get_nowait())
            except queue.Empty:
                break
        self.unjudged -= len(taken)
        return taken
