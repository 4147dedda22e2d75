"""What `rephrase run` shows its user: one live status line, the summary, and errors; everything else in a file.

vLLM's start-up (Triton, NUMA, compilation, weights) and datatrove's per-step stat dumps are hundreds of lines
that bury the progress and the summary. Unless `-v`, the run's stdout and stderr (file descriptors 1 and 2, so
the stage workers and the engine processes it spawns too) go to `OUT/logs/run.log`; each datatrove task keeps its
own log under `OUT/logs/<stage>/logs/` as before. The terminal gets a status line built from what the run
already writes: which stage is running and how many of its tasks completed (datatrove's `executor.json` and
`completions/`), and the LLM stage's documents, accepted rewrites, tok/s and ETA (`rephrase.llm.progress`
status files). On a terminal it is a live rich line; elsewhere (a Slurm job log, `nohup`) a plain line every
`run.progress_interval_s`. Warnings of the `rephrase.notice` logger (an input that keeps tasks idle, ...) reach
both the terminal and the log. An error is printed to the terminal with the log file to read.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape

from rephrase.llm.progress import duration, remaining

STATUS_REFRESH_S = 1.0
"""How often the live line re-reads the status files (they are small; a stage writes them every few seconds)."""


def llm_status(progress: Path) -> str | None:
    """The LLM stage's tasks summed while any runs: documents (of how many), rewrites accepted, out tok/s, ETA."""
    tasks = []
    for path in sorted(progress.glob("*.json")):
        try:
            tasks.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):  # being rewritten: the next refresh reads it
            continue
    if all(t.get("done") for t in tasks):  # finished (or left by an earlier run): the summary will tell
        return None
    docs, accepted, attempted = (sum(t[k] for t in tasks) for k in ("docs", "accepted", "attempted"))
    out_tokens, elapsed = sum(t["output_tokens"] for t in tasks), max(t["elapsed_s"] for t in tasks)
    sized = all(t["total"] is not None for t in tasks)
    total = sum(t["total"] for t in tasks) if sized else None
    counted = all(t.get("input_total") is not None for t in tasks)  # each task's input records, once counted
    read = sum(t.get("input_read", 0) for t in tasks)
    records = sum(t["input_total"] for t in tasks) if counted else None
    line = f"rephrase {docs}/{total} documents" if sized else f"rephrase {docs} documents"
    if not sized and counted:
        line += f" (input {read}/{records} records read)"
    line += f", {accepted}/{attempted} rewrites accepted"
    if elapsed > 0:
        line += f", {out_tokens / elapsed:.0f} out tok/s"
    left = remaining(elapsed, docs, total, read, records)
    return line + (f", ETA {duration(left)}" if left is not None else "")


def stage_status(logs: Path) -> str | None:
    """The stage started last: its name and how many of its tasks completed."""
    stages = []
    for executor in logs.rglob("executor.json"):
        try:
            tasks = int(json.loads(executor.read_text(encoding="utf-8"))["world_size"])
        except (OSError, ValueError, KeyError):
            continue
        completions = executor.parent / "completions"
        done = sum(1 for _ in completions.iterdir()) if completions.is_dir() else 0
        stages.append((executor.stat().st_mtime, executor.parent.relative_to(logs).as_posix(), done, tasks))
    if not stages:
        return None
    _, name, done, tasks = max(stages)
    return f"stage {name}: {done}/{tasks} tasks done"


def status_line(logs: Path, progress: Path, elapsed_s: float) -> str:
    parts = [p for p in (stage_status(logs), llm_status(progress)) if p]
    return " · ".join([*(parts or ["starting"]), f"{duration(elapsed_s)} elapsed"])


class StatusLine:
    """A thread showing `status_line` on `console`: live on a terminal, a plain line every `interval_s` elsewhere."""

    def __init__(self, console: Console, logs: Path, progress: Path, interval_s: float) -> None:
        self.console, self.logs, self.progress, self.interval_s = console, logs, progress, interval_s
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._show, name="rephrase-status", daemon=True)

    def line(self) -> str:
        return status_line(self.logs, self.progress, time.monotonic() - self.start)

    def _show(self) -> None:
        if self.console.is_terminal:
            with Live(console=self.console, transient=True, auto_refresh=False) as live:
                while not self._stop.wait(STATUS_REFRESH_S):
                    live.update(escape(self.line()), refresh=True)
        else:
            while not self._stop.wait(self.interval_s):
                self.console.print(self.line(), markup=False, highlight=False)

    def __enter__(self) -> StatusLine:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def quiet_terminal(log_path: Path, progress: Path, interval_s: float) -> Iterator[Console]:
    """Send fds 1 and 2 to `log_path` (appended) while the body runs, showing the status line on the real stdout;
    restore them after, also on an error, which then names the log. Yields the console for the real stdout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = Console(file=os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8", errors="replace"))
    log = open(log_path, "ab", buffering=0)  # noqa: SIM115 (closed below, after the fds that share it)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    notices = logging.getLogger("rephrase.notice")
    handlers = [ToConsole(console), logging.StreamHandler(sys.stderr)]  # sys.stderr writes to the log now
    for handler in handlers:
        notices.addHandler(handler)
    try:
        with StatusLine(console, log_path.parent, progress, interval_s):
            yield console
    except BaseException:
        _restore(saved_out, saved_err, log)
        print(f"rephrase: everything the run printed is in {log_path}", file=sys.stderr)
        raise
    else:
        _restore(saved_out, saved_err, log)
    finally:
        for handler in handlers:
            notices.removeHandler(handler)
        console.file.close()


class ToConsole(logging.Handler):
    """A warning of the `rephrase.notice` logger on the real terminal, printed above the live status line."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        message = f"rephrase: {record.getMessage()}"
        self.console.print(message, style="yellow", markup=False, highlight=False, soft_wrap=True)


def _restore(saved_out: int, saved_err: int, log) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved_out, 1)
    os.dup2(saved_err, 2)
    os.close(saved_out)
    os.close(saved_err)
    log.close()
