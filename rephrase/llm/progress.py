"""Live progress of the LLM stage: the one slow step, so the one a user watches.

On a terminal tqdm draws a bar (`disable=None`). Anywhere else (a Slurm job log, `nohup`, CI) a bar is noise, so
the task logs one plain line every `interval_s` instead: documents done (of how many, when the input is sized),
rewrites accepted, tokens in and out, output tok/s over the last interval and overall, and the ETA. Documents
reach the stage through filters, so their number is rarely known; the ETA then comes from how far the task's
reader is through its input records (`source`: rephrase.inputs.ReadSources, which counts them beside the
reading). `tail -f` on a job's log then says where the run is. The stage calls `tick()` whenever generations
come back, so a line is due even while one large batch is still generating; the same summary line closes every
task. With `status_path`, the task also keeps its running totals in that small JSON file (rewritten every
`STATUS_EVERY_S`), which the run's terminal status line (rephrase.terminal) sums over tasks.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from datatrove.utils.logging import logger
from tqdm import tqdm

STATUS_EVERY_S = 2.0
"""Seconds between rewrites of a task's status file."""


@dataclass
class Totals:
    """Running totals over a task; `attempted` counts (document, prompt) pairs that reached an outcome."""

    accepted: int = 0
    attempted: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class StageProgress:
    def __init__(
        self,
        rank: int,
        total: int | None = None,
        interval_s: float = 60.0,
        totals: Totals | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = logger.info,
        status_path: Path | None = None,
        source: InputProgress | None = None,
    ) -> None:
        self.rank, self.total, self.interval_s, self.clock, self.log = rank, total, interval_s, clock, log
        self.source = source
        self.status_path, self.status_at = status_path, float("-inf")
        self.start = self.last_at = clock()
        self.docs, self.last_out = 0, 0
        self.bar = tqdm(
            desc=f"rephrase [task {rank}]", total=total, unit="doc", disable=None, dynamic_ncols=True, mininterval=1
        )
        self.totals = totals or Totals()  # the stage's own object: tick() reads it between updates

    def update(self, docs: int, totals: Totals) -> None:
        """Advance by `docs` finished documents; `totals` are the task's running totals so far."""
        self.totals, self.docs = totals, self.docs + docs
        elapsed = self.clock() - self.start
        self.bar.set_postfix(
            accepted=f"{totals.accepted}/{totals.attempted}" + (f" {_pct(totals)}" if totals.attempted else ""),
            out_tok=totals.output_tokens,
            tok_s=f"{totals.output_tokens / elapsed:.0f}" if elapsed > 0 else "-",
            refresh=False,
        )
        self.bar.update(docs)  # a disabled bar (no terminal) counts nothing, hence self.docs
        self.tick()

    def tick(self) -> None:
        """Without a terminal: log a progress line if `interval_s` has passed since the last one."""
        now = self.clock()
        if now - self.status_at >= STATUS_EVERY_S:
            self._write_status(now, done=False)
        if not self.bar.disable or now - self.last_at < self.interval_s:
            return
        t, elapsed, window = self.totals, now - self.start, now - self.last_at
        done = f"{self.docs}/{self.total} documents" if self.total else f"{self.docs} documents"
        read, records = self._input()
        if not self.total and records:
            done += f" (input {read}/{records} records read)"
        eta = self._eta(remaining(elapsed, self.docs, self.total, read, records), read, records)
        self.log(
            f"rephrase [task {self.rank}]: {done}, {t.accepted}/{t.attempted} rewrites accepted, tokens in "
            f"{t.input_tokens} out {t.output_tokens}, {(t.output_tokens - self.last_out) / window:.1f} out tok/s "
            f"over the last {duration(window)} ({t.output_tokens / elapsed:.1f} overall), "
            f"{duration(elapsed)} elapsed, ETA {eta}"
        )
        self.last_at, self.last_out = now, t.output_tokens

    def close(self) -> str:
        """Close the bar and log (and return) one line that reads the same on a terminal and in a log file."""
        self.bar.close()
        t, elapsed = self.totals, self.clock() - self.start
        line = (
            f"rephrase [task {self.rank}]: {self.docs} documents, {t.accepted}/{t.attempted} rewrites accepted"
            f"{f' ({_pct(t)})' if t.attempted else ''}, {t.output_tokens} output tokens in {elapsed:.1f} s"
            f" ({t.output_tokens / elapsed if elapsed > 0 else 0:.1f} tok/s)"
        )
        self.log(line)
        self._write_status(self.clock(), done=True)
        return line

    def _write_status(self, now: float, done: bool) -> None:
        """The task's totals as JSON, replaced atomically so a reader never sees half a file."""
        if self.status_path is None:
            return
        self.status_at = now
        read, records = self._input()
        status = {"docs": self.docs, "total": self.total, "elapsed_s": round(now - self.start, 3), "done": done}
        status |= {"input_read": read, "input_total": records}
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.status_path.with_suffix(".partial")
        partial.write_text(json.dumps({**status, **asdict(self.totals)}), encoding="utf-8")
        os.replace(partial, self.status_path)

    def _eta(self, left: float | None, read: int, records: int | None) -> str:
        if left is not None:
            return duration(left)
        if self.total:
            return "unknown (nothing done yet)"
        if records is None:
            return "unknown (input not counted)"
        if read >= records:
            return "soon (input all read; its last documents are generating)"
        return "unknown (nothing read yet)"

    def _input(self) -> tuple[int, int | None]:
        if self.source is None:
            return 0, None
        return self.source.records_read, self.source.records_total


class InputProgress(Protocol):
    """How far a task is through its input: records read so far, and all it will read (None until counted)."""

    records_read: int
    records_total: int | None


def remaining(elapsed: float, docs: int, total: int | None, read: int, records: int | None) -> float | None:
    """Seconds left: from the documents done of `total` when the stage knows it, else from the input records read
    of `records` (documents leave the LLM stage about as fast as their records are read, the prefetch buffer
    ahead); None if neither, or once every record is read while the last documents are still generating."""
    if total and docs:
        return max(0.0, elapsed / docs * (total - docs))
    if records and 0 < read < records:
        return elapsed / read * (records - read)
    return None


def _pct(totals: Totals) -> str:
    return f"{100 * totals.accepted / totals.attempted:.1f}%"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
