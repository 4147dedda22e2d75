"""Live progress of the LLM stage: the one slow step, so the one a user watches.

tqdm draws the bar only on a terminal (`disable=None`): a task's log file or a Slurm job's stderr gets no
carriage-return noise, only the one-line summary logged when the task's documents are done. The total (and so
the ETA) is shown only when the step is given a sized input; a datatrove stream has no length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from datatrove.utils.logging import logger
from tqdm import tqdm


@dataclass
class Totals:
    """Running totals over a task; `attempted` counts (document, prompt) pairs that reached an outcome."""

    accepted: int = 0
    attempted: int = 0
    output_tokens: int = 0


class StageProgress:
    def __init__(self, rank: int, total: int | None = None) -> None:
        self.rank, self.start, self.docs = rank, time.perf_counter(), 0
        self.bar = tqdm(
            desc=f"rephrase [task {rank}]", total=total, unit="doc", disable=None, dynamic_ncols=True, mininterval=1
        )
        self.totals = Totals()

    def update(self, docs: int, totals: Totals) -> None:
        """Advance by `docs` finished documents; `totals` are the task's running totals so far."""
        self.totals, self.docs = totals, self.docs + docs
        elapsed = time.perf_counter() - self.start
        self.bar.set_postfix(
            accepted=f"{totals.accepted}/{totals.attempted}" + (f" {_pct(totals)}" if totals.attempted else ""),
            out_tok=totals.output_tokens,
            tok_s=f"{totals.output_tokens / elapsed:.0f}" if elapsed > 0 else "-",
            refresh=False,
        )
        self.bar.update(docs)  # a disabled bar (no terminal) counts nothing, hence self.docs

    def close(self) -> str:
        """Close the bar and log (and return) one line that reads the same on a terminal and in a log file."""
        self.bar.close()
        t, elapsed = self.totals, time.perf_counter() - self.start
        line = (
            f"rephrase [task {self.rank}]: {self.docs} documents, {t.accepted}/{t.attempted} rewrites accepted"
            f"{f' ({_pct(t)})' if t.attempted else ''}, {t.output_tokens} output tokens in {elapsed:.1f} s"
            f" ({t.output_tokens / elapsed if elapsed > 0 else 0:.1f} tok/s)"
        )
        logger.info(line)
        return line


def _pct(totals: Totals) -> str:
    return f"{100 * totals.accepted / totals.attempted:.1f}%"
