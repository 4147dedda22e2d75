"""Best-of-n selection: pure functions over candidates and validator verdicts, so they are unit-tested without a
model. Every candidate is checked by every plain validator (not short-circuited) so the stats say how often each
check fails, which is what a prompt author tunes against. Model-backed checks (those with `prepare`, e.g. the
MiniLM embeddings of `faithful`, about 50 ms a candidate on a CPU core) only see the candidates that passed every
plain check: a truncated or chatty candidate is rejected anyway, and embedding it would cost more CPU than the
plain checks of the whole round. Their stats count the candidates they checked."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rephrase.llm.engine import Completion
from rephrase.llm.validators import Validator, Verdict, length_closeness


@dataclass
class Pick:
    index: int | None  # chosen candidate, None when none passed
    verdicts: list[dict[str, Verdict]] = field(default_factory=list)  # per candidate, per validator it reached
    failures: Counter = field(default_factory=Counter)  # reason -> number of candidates failing it

    @property
    def accepted(self) -> bool:
        return self.index is not None

    def reason(self) -> str:
        """Why nothing was kept: the failing reasons, most frequent first (`no_candidates` if there were none)."""
        if not self.verdicts:
            return "no_candidates"
        return ",".join(r for r, _ in self.failures.most_common())


def select_round(
    jobs: Sequence[tuple[str, Sequence[Completion]]],
    validators: Sequence[Validator],
    rank: Callable[[dict[str, Verdict]], float] = length_closeness,
) -> list[Pick]:
    """One Pick per (source, candidates) of a generation round. Each model-backed check prepares (embeds) the
    round's surviving sources and candidates in one batch, then judges them."""
    plain = [v for v in validators if not hasattr(v, "prepare")]
    costly = [v for v in validators if hasattr(v, "prepare")]
    verdicts = [[{v.name: v(source, cand) for v in plain} for cand in cands] for source, cands in jobs]
    for check in costly:
        alive = [
            (j, i)
            for j, (source, cands) in enumerate(jobs)
            for i in range(len(cands))
            if all(vd.ok for vd in verdicts[j][i].values())
        ]
        check.prepare([t for j, i in alive for t in (jobs[j][0], jobs[j][1][i].text)])
        for j, i in alive:
            verdicts[j][i][check.name] = check(jobs[j][0], jobs[j][1][i])
    picks = []
    for per_candidate in verdicts:
        pick, best = Pick(index=None, verdicts=per_candidate), None
        for i, cand_verdicts in enumerate(per_candidate):
            failed = [vd.reason for vd in cand_verdicts.values() if not vd.ok]
            pick.failures.update(failed)
            score = None if failed else rank(cand_verdicts)
            if score is not None and (best is None or score > best):
                best, pick.index = score, i
        picks.append(pick)
    return picks


def select(
    source: str,
    candidates: Sequence[Completion],
    validators: Sequence[Validator],
    rank: Callable[[dict[str, Verdict]], float] = length_closeness,
) -> Pick:
    return select_round([(source, candidates)], validators, rank)[0]
