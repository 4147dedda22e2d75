"""Best-of-n selection: pure functions over candidates and validator verdicts, so they are unit-tested without a
model. Every candidate is checked by every validator (not short-circuited) so the stats say how often each check
fails, which is what a prompt author tunes against."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rephrase.llm.engine import Completion
from rephrase.llm.validators import Validator, Verdict, length_closeness


@dataclass
class Pick:
    index: int | None  # chosen candidate, None when none passed
    verdicts: list[dict[str, Verdict]] = field(default_factory=list)  # per candidate, per validator
    failures: Counter = field(default_factory=Counter)  # reason -> number of candidates failing it

    @property
    def accepted(self) -> bool:
        return self.index is not None

    def reason(self) -> str:
        """Why nothing was kept: the failing reasons, most frequent first (`no_candidates` if there were none)."""
        if not self.verdicts:
            return "no_candidates"
        return ",".join(r for r, _ in self.failures.most_common())


def select(
    source: str,
    candidates: Sequence[Completion],
    validators: Sequence[Validator],
    rank: Callable[[dict[str, Verdict]], float] = length_closeness,
) -> Pick:
    pick = Pick(index=None)
    best = None
    for i, cand in enumerate(candidates):
        verdicts = {v.name: v(source, cand) for v in validators}
        pick.verdicts.append(verdicts)
        failed = [vd.reason for vd in verdicts.values() if not vd.ok]
        pick.failures.update(failed)
        if not failed:
            score = rank(verdicts)
            if best is None or score > best:
                best, pick.index = score, i
    return pick
