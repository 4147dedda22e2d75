"""Plan, then stream: the token mix, rebalancing and curriculum of any corpus size, decided row by row.

These steps need global totals (the synthetic tokens of the whole dataset, the tokens of each language), never
global rows. The count stage streams every row that survived dedup and tallies its tokens per (pool, bin):
  pool  the row's kind and its value of every rebalancing key, e.g. ("synthetic", "fr", "textbook@v1");
  bin   its draw, a seeded hash of its unique key (`record`, `record#prompt`) into BINS equal bins.
The merged histograms are the plan's only input. Every decision has one shape, per step and group:
  copies = whole + (bin < below)
that is, keep `whole` copies of every row and one more of the rows whose draw is below a threshold. Thresholds
sit on bin boundaries, so the planner knows the exact tokens each choice yields (the achieved share is exact, not
an estimate), and each finalize task applies the same rule to each row from (seed, key, plan) alone: the result
does not depend on how rows are sharded, how many tasks run, or which executor runs them.

Resolution: a threshold can only fall between bins, so a group's tokens land within half a bin of its target,
1/(2 * BINS) of the group at scale; on a small corpus most rows have a bin of their own and the choice is the
best prefix of the rows in seeded hash order. Steps compose on one draw: a row the mix left out is never revived
by a rebalance, and a rebalance's extra copies go to rows in the same seeded order.

Curriculum: stage boundaries are token quantiles of the signal, from a histogram of (pool, signal rounded to 4
significant digits) scaled by what the mix and rebalancing keep of each pool; rows with one rounded value share a
stage, rows without the signal go to the last stage.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from xxhash import xxh3_64_intdigest

from rephrase.tally import Tally, merge

if TYPE_CHECKING:
    from rephrase.rebalance import CurriculumConfig, RebalanceConfig

BINS = 4096
MISSING = "none"
Pool = tuple[str, ...]


def row_key(doc: Document) -> str:
    """A row's unique key (set by rephrase.rows.ExplodeRows); rows built by hand (tests, notebooks) use their id."""
    return doc.metadata.get("key") or doc.id


def draw(seed: int, key: str) -> int:
    """The row's bin in [0, BINS): uniform, seeded, and the same in every task that sees the row."""
    return (xxh3_64_intdigest(f"{seed}:{key}") * BINS) >> 64


def row_tokens(doc: Document) -> int:
    """The model's tokens (`n_tokens`, set by the LLM stage) or, for rows without them, whitespace words."""
    n = doc.metadata.get("n_tokens")
    return int(n) if n is not None else len(doc.text.split())


def group_of(doc: Document, key: str) -> str:
    if key == "kind":
        return "synthetic" if doc.metadata.get("kind") == "synthetic" else "original"
    value = doc.metadata.get(key)
    return MISSING if value is None else str(value)


def signal_of(doc: Document, key: str) -> float | None:
    value = doc.metadata.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"curriculum signal {key!r} must be numeric; row {doc.id} has {value!r}") from None


def rounded(value: float | None) -> str:
    """The signal's histogram key: 4 significant digits, so the histogram stays small whatever the corpus."""
    return MISSING if value is None else repr(float(f"{value:.4g}"))


@dataclass(frozen=True)
class Rule:
    whole: int = 1
    below: int = 0

    def copies(self, bin_: int) -> int:
        return self.whole + (bin_ < self.below)


IDENTITY = Rule()


@dataclass
class StepPlan:
    """One step's rule per group (`by`: a metadata key), and the tokens per group before and after it."""

    by: str
    rules: dict[str, Rule] = field(default_factory=dict)
    multipliers: dict[str, float] = field(default_factory=dict)
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)

    def rule(self, group: str) -> Rule:
        return self.rules.get(group, IDENTITY)

    def table(self) -> str:
        """The achieved distribution, one line per group."""
        total_before, total_after = max(1, sum(self.before.values())), max(1, sum(self.after.values()))
        lines = [f"{'group':<16} {'tokens in':>12} {'share in':>8} {'x':>6} {'tokens out':>12} {'share out':>9}"]
        for g in sorted(self.before, key=lambda g: (-self.after[g], g)):
            lines.append(
                f"{g:<16} {self.before[g]:>12,} {self.before[g] / total_before:>8.1%} "
                f"{self.multipliers.get(g, 1.0):>6.2f} {self.after[g]:>12,} {self.after[g] / total_after:>9.1%}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class CurriculumStage:
    tokens: int
    """Tokens the plan expects in the stage."""
    low: float | None
    high: float | None


@dataclass
class CurriculumPlan:
    signal: str
    stage_of: dict[str, int]
    """Rounded signal value (or `none`) -> stage."""
    stages: list[CurriculumStage]

    def stage(self, value: float | None) -> int:
        key = rounded(value)
        if key not in self.stage_of:
            raise ValueError(f"curriculum: signal {key} was not counted by the count stage: rerun the run")
        return self.stage_of[key]


@dataclass
class Plan:
    keys: list[str]
    """The pool's metadata keys: kind, then each rebalancing rule's `by`."""
    mix: StepPlan
    rebalance: list[StepPlan]
    curriculum: CurriculumPlan | None
    rows: int


class Histogram:
    """Tokens per (pool, bin) and the copies each (pool, bin) has after the steps planned so far."""

    def __init__(self, tokens: dict[tuple[Pool, int], int]) -> None:
        self.tokens = tokens
        self.copies: dict[tuple[Pool, int], int] = dict.fromkeys(tokens, 1)

    def by_group(self, index: int) -> dict[str, dict[int, int]]:
        groups: defaultdict[str, Counter] = defaultdict(Counter)
        for (pool, bin_), n in self.tokens.items():
            if c := self.copies[(pool, bin_)]:
                groups[pool[index]][bin_] += c * n
        return {g: dict(h) for g, h in groups.items()}

    def apply(self, index: int, step: StepPlan) -> None:
        for pool, bin_ in self.tokens:
            self.copies[(pool, bin_)] *= step.rule(pool[index]).copies(bin_)

    def pool_ratio(self) -> dict[Pool, float]:
        """Tokens kept per pool over tokens counted: what the planned steps do to each pool."""
        before: Counter = Counter()
        after: Counter = Counter()
        for (pool, bin_), n in self.tokens.items():
            before[pool] += n
            after[pool] += n * self.copies[(pool, bin_)]
        return {p: after[p] / before[p] if before[p] else 1.0 for p in before}


def scale(hist: dict[int, int], multiplier: float) -> tuple[Rule, int]:
    """The rule that brings a group's tokens closest to `multiplier` times their total, and the tokens it gives.

    Whole copies first; the fraction is the prefix of bins (in draw order) whose tokens come closest to it."""
    total = sum(hist.values())
    whole = math.floor(multiplier + 1e-12)
    target = (multiplier - whole) * total
    best_below, best_sum, running = 0, 0, 0
    for bin_ in sorted(hist):
        running += hist[bin_]
        if abs(running - target) < abs(best_sum - target):
            best_below, best_sum = bin_ + 1, running
    return Rule(whole, best_below), whole * total + best_sum


def _plan_step(hist: Histogram, index: int, by: str, multipliers: dict[str, float]) -> StepPlan:
    groups = hist.by_group(index)
    step = StepPlan(by, multipliers=multipliers)
    for g, h in groups.items():
        step.before[g] = sum(h.values())
        step.rules[g], step.after[g] = scale(h, multipliers.get(g, 1.0))
    hist.apply(index, step)
    return step


def _plan_mix(hist: Histogram, share: float | None, max_upsample: float) -> StepPlan:
    """Synthetic tokens / all tokens as close to `share` as whole bins allow (WRAP trains on a 1:1 mix of real and
    rephrased text). Too little synthetic text: its rows are repeated up to `max_upsample` times; too much: it is
    downsampled. Then the originals are trimmed to what the synthetic rows achieved, so the share is exact."""
    groups = hist.by_group(0)
    step = StepPlan("kind", before={g: sum(h.values()) for g, h in groups.items()})
    s, o = step.before.get("synthetic", 0), step.before.get("original", 0)
    if share is None or s == 0 or o == 0 or share in (0.0, 1.0):
        step.after = dict(step.before)
        return step
    ideal = o * share / (1 - share) / s
    step.multipliers["synthetic"] = min(max_upsample, ideal) if ideal > 1 else ideal
    step.rules["synthetic"], step.after["synthetic"] = scale(groups["synthetic"], step.multipliers["synthetic"])
    step.multipliers["original"] = min(1.0, step.after["synthetic"] * (1 - share) / share / o)
    step.rules["original"], step.after["original"] = scale(groups["original"], step.multipliers["original"])
    hist.apply(0, step)
    return step


def build_plan(
    counts: dict[str, Counter],
    share: float | None,
    max_upsample: float,
    rebalance: list[RebalanceConfig],
    curriculum: CurriculumConfig | None,
) -> Plan:
    """The plan from the merged counts of every count task (see the module docstring)."""
    from rephrase.rebalance import multipliers_for

    keys = ["kind", *(r.by for r in rebalance)]
    tokens: dict[tuple[Pool, int], int] = {}
    for key, n in counts.get("tokens", {}).items():
        *pool, bin_ = json.loads(key)
        tokens[(tuple(pool), bin_)] = int(n)
    hist = Histogram(tokens)
    mix = _plan_mix(hist, share, max_upsample)
    steps = []
    for i, config in enumerate(rebalance, start=1):
        groups = {g: sum(h.values()) for g, h in hist.by_group(i).items()}
        steps.append(_plan_step(hist, i, config.by, multipliers_for(config, groups)))
    cur = _plan_curriculum(counts.get("signal", {}), hist, curriculum) if curriculum else None
    return Plan(keys, mix, steps, cur, int(counts.get("rows", {}).get("rows", 0)))


def _plan_curriculum(signal: dict[str, float], hist: Histogram, config: CurriculumConfig) -> CurriculumPlan:
    ratio = hist.pool_ratio()
    expected: Counter = Counter()
    for key, n in signal.items():
        *pool, value = json.loads(key)
        expected[value] += n * ratio.get(tuple(pool), 1.0)
    present = sorted((v for v in expected if v != MISSING), key=float, reverse=config.order == "descending")
    order = present + ([MISSING] if MISSING in expected else [])
    per_stage = max(1.0, sum(expected.values())) / config.stages
    stage_of, tokens, ranges, seen = {}, [0.0] * config.stages, [[] for _ in range(config.stages)], 0.0
    for value in order:
        s = min(config.stages - 1, int((seen + expected[value] / 2) // per_stage))  # by the value's midpoint
        stage_of[value], seen = s, seen + expected[value]
        tokens[s] += expected[value]
        if value != MISSING:
            ranges[s].append(float(value))
    stages = [
        CurriculumStage(round(tokens[s]), min(ranges[s], default=None), max(ranges[s], default=None))
        for s in range(config.stages)
    ]
    return CurriculumPlan(config.signal, stage_of, stages)


class PlanSource:
    """The plan, built on first use from the count stage's tallies, once per process: the finalize steps are built
    before the counts exist, and every step of a task shares one instance (pickling keeps the sharing)."""

    def __init__(
        self,
        counts: str,
        share: float | None,
        max_upsample: float,
        rebalance: list[RebalanceConfig],
        curriculum: CurriculumConfig | None,
        seed: int,
    ) -> None:
        self.counts, self.share, self.max_upsample = counts, share, max_upsample
        self.rebalance, self.curriculum, self.seed = rebalance, curriculum, seed
        self._plan: Plan | None = None

    @property
    def keys(self) -> list[str]:
        return ["kind", *(r.by for r in self.rebalance)]

    def get(self) -> Plan:
        if self._plan is None:
            if not Path(self.counts).is_dir():
                raise FileNotFoundError(f"{self.counts} is missing: the count stage must run before finalize")
            counts = merge(self.counts)
            self._plan = build_plan(counts, self.share, self.max_upsample, self.rebalance, self.curriculum)
        return self._plan


class CountPools(PipelineStep):
    """The count stage's last step: tokens per (pool, bin), and per (pool, rounded signal) for a curriculum, of the
    rows that survived dedup, saved as this task's tally."""

    name = "count"
    type = "🔢 - COUNT"

    def __init__(self, source: PlanSource) -> None:
        super().__init__()
        self.source = source

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        tally, keys, signal = Tally(), self.source.keys, self.source.curriculum
        for doc in data:
            pool = [group_of(doc, k) for k in keys]
            n = row_tokens(doc)
            tally.add("tokens", json.dumps([*pool, draw(self.source.seed, row_key(doc))]), n)
            tally.add("rows", "rows")
            if signal is not None:
                tally.add("signal", json.dumps([*pool, rounded(signal_of(doc, signal.signal))]), n)
            self.stat_update("rows")
            self.stat_update("tokens", value=n)
        tally.save(self.source.counts, rank)
        yield from ()
