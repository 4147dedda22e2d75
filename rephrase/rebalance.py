"""Rebalancing (sampling weights per group, by tokens) and curriculum ordering of the dataset's rows.

Rebalancing: rows are grouped by one metadata key (`kind`, `language`, `quality_bucket`, `prompt`,
`semantic_cluster`, ...) and each group is sampled by a multiplier on its tokens, the way pretraining mixtures are
stated (The Pile's epochs per component, Dolma's and DoReMi's domain weights). Two ways to say it:
- `multiplier`: the weight is the multiplier (2 doubles a group's tokens, 0.5 halves them); unnamed groups keep 1.
- `share`: weights are target shares of the output's tokens; the largest output that meets every share without
  repeating any group more than `max_upsample` times is chosen; unnamed groups get 0 and are left out.
A `"*"` weight names every other group in both modes. Upsampling repeats whole rows and is capped by
`max_upsample` (1: never repeat), since repeated tokens are worth less than new ones (Muennighoff et al., 2023:
up to about 4 epochs of repetition is nearly as good as new data, far more is not). A fractional multiplier takes
rows in a seeded hash order until the group's tokens are closest to the target, so a plan is deterministic.

Curriculum: rows are ordered by a signal (`quality_bucket`, `quality_score`, `perplexity`, `n_tokens`, ...)
ascending or descending, ties in seeded hash order, rows without the signal last; `stages` cuts the order into
consecutive stages of about equal tokens and each stage's tokens and signal range go to the dataset card.

Tokens are `n_tokens` (the model's tokens, set by the pipeline) or, for rows without it, whitespace words.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Literal

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.disk_base import DiskWriter
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, model_validator
from xxhash import xxh3_64_intdigest

logger = logging.getLogger(__name__)

OTHER = "*"


class RebalanceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str = Field(description="Metadata key to group rows by, e.g. language, quality_bucket, prompt, kind.")
    mode: Literal["share", "multiplier"] = Field(
        "share", description="share: weights are target token shares; multiplier: weights multiply group tokens."
    )
    weights: dict[str, NonNegativeFloat] = Field(
        description="Group value as text ('3' for bucket 3, 'none' when the key is missing, '*' for all others) "
        "-> weight."
    )
    max_upsample: float = Field(1.0, ge=1, description="Most copies of any row; 1 only ever downsamples.")

    @model_validator(mode="after")
    def _share_needs_a_weight(self) -> RebalanceConfig:
        if self.mode == "share" and not any(self.weights.values()):
            raise ValueError("mode share needs at least one weight > 0 in `weights`, e.g. {en: 0.7, '*': 0.3}")
        return self


class CurriculumConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signal: str = Field(
        "quality_bucket", description="Metadata key to order by: quality_bucket, quality_score, perplexity, n_tokens."
    )
    order: Literal["ascending", "descending"] = Field("ascending", description="ascending puts low values first.")
    stages: int = Field(1, ge=1, le=1000, description="Consecutive stages of about equal tokens.")


def weight_of(config: RebalanceConfig, group: str) -> float:
    """The weight of `group`: its own, else the `*` weight, else 1 (multiplier: unchanged) or 0 (share: left out)."""
    default = 1.0 if config.mode == "multiplier" else 0.0
    return config.weights.get(group, config.weights.get(OTHER, default))


def row_tokens(doc: Document) -> int:
    n = doc.metadata.get("n_tokens")
    return int(n) if n is not None else len(doc.text.split())


def group_of(doc: Document, key: str) -> str:
    value = doc.metadata.get(key)
    return "none" if value is None else str(value)


def _hash_order(docs: list[Document], indices: list[int], seed: int) -> list[int]:
    return sorted(indices, key=lambda i: xxh3_64_intdigest(f"{seed}:{docs[i].id}:{i}"))


@dataclass(frozen=True)
class RebalancePlan:
    copies: list[int]
    """Per input row: 0 dropped, 1 kept, k > 1 kept and repeated k - 1 times."""
    multipliers: dict[str, float]
    """Per group: the multiplier aimed at (after the cap)."""
    before: dict[str, int]
    """Tokens per group in the input."""
    after: dict[str, int]
    """Tokens per group in the output, repeats included."""

    def table(self) -> str:
        """The achieved distribution, one line per group."""
        total_before, total_after = max(1, sum(self.before.values())), max(1, sum(self.after.values()))
        lines = [f"{'group':<16} {'tokens in':>12} {'share in':>8} {'x':>6} {'tokens out':>12} {'share out':>9}"]
        for g in sorted(self.before, key=lambda g: (-self.after[g], g)):
            lines.append(
                f"{g:<16} {self.before[g]:>12,} {self.before[g] / total_before:>8.1%} {self.multipliers[g]:>6.2f} "
                f"{self.after[g]:>12,} {self.after[g] / total_after:>9.1%}"
            )
        return "\n".join(lines)


def multipliers_for(config: RebalanceConfig, before: dict[str, int]) -> dict[str, float]:
    """Each present group's token multiplier. share mode: output size B = min over weighted groups of
    tokens * cap / share (the largest output no group needs more than `max_upsample` copies for); multiplier =
    share * B / tokens."""
    if config.mode == "multiplier":
        return {g: min(weight_of(config, g), config.max_upsample) for g in before}
    weights = {g: w for g, tokens in before.items() if tokens > 0 and (w := weight_of(config, g)) > 0}
    if not weights:
        return dict.fromkeys(before, 0.0)
    norm = sum(weights.values())
    shares = {g: w / norm for g, w in weights.items()}
    budget = min(before[g] * config.max_upsample / s for g, s in shares.items())
    return {g: min(config.max_upsample, shares[g] * budget / before[g]) if g in shares else 0.0 for g in before}


def plan_rebalance(docs: list[Document], config: RebalanceConfig, seed: int) -> RebalancePlan:
    tokens = [row_tokens(d) for d in docs]
    groups = [group_of(d, config.by) for d in docs]
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    before = {g: sum(tokens[i] for i in rows) for g, rows in members.items()}
    multipliers = multipliers_for(config, before)
    copies = [0] * len(docs)
    for g, rows in members.items():
        whole = math.floor(multipliers[g])
        budget = (multipliers[g] - whole) * before[g]
        total = 0
        for i in _hash_order(docs, rows, seed):
            copies[i] = whole
            if abs(total + tokens[i] - budget) < abs(total - budget):  # this row brings the fraction closer
                copies[i] += 1
                total += tokens[i]
    after = dict.fromkeys(before, 0)
    for i, g in enumerate(groups):
        after[g] += copies[i] * tokens[i]
    return RebalancePlan(copies, multipliers, before, after)


@dataclass(frozen=True)
class Stage:
    rows: int
    tokens: int
    low: float | None
    """Smallest signal value in the stage (None: only rows without the signal)."""
    high: float | None


@dataclass(frozen=True)
class CurriculumPlan:
    order: list[int]
    """Input row indices in output order."""
    stage: list[int]
    """Stage of each output position."""
    stages: list[Stage]
    missing: int
    """Rows without the signal (placed last)."""


def _signal(doc: Document, key: str) -> float | None:
    value = doc.metadata.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"curriculum signal {key!r} must be numeric; row {doc.id} has {value!r}") from None


def plan_curriculum(docs: list[Document], config: CurriculumConfig, seed: int) -> CurriculumPlan:
    values = [_signal(d, config.signal) for d in docs]
    present = [i for i, v in enumerate(values) if v is not None]
    missing = [i for i, v in enumerate(values) if v is None]
    # a stable sort of a hash-ordered list: ties stay in seeded order, not input order (which follows the source)
    order = sorted(_hash_order(docs, present, seed), key=values.__getitem__, reverse=config.order == "descending")
    order += _hash_order(docs, missing, seed)
    per_stage = max(1, sum(row_tokens(d) for d in docs)) / config.stages
    stage: list[int] = []
    rows, tokens = [0] * config.stages, [0] * config.stages
    ranges: list[list[float]] = [[] for _ in range(config.stages)]
    seen = 0
    for i in order:
        s = min(config.stages - 1, int(seen // per_stage))
        stage.append(s)
        n = row_tokens(docs[i])
        rows[s], tokens[s], seen = rows[s] + 1, tokens[s] + n, seen + n
        if values[i] is not None:
            ranges[s] = [min(ranges[s][0], values[i]), max(ranges[s][1], values[i])] if ranges[s] else [values[i]] * 2
    stages = [Stage(rows[s], tokens[s], *(ranges[s] or [None, None])) for s in range(config.stages)]
    return CurriculumPlan(order, stage, stages, len(missing))


class Rebalance(PipelineStep):
    """Holds its task's rows (run it in the single-task finalize stage, like `rephrase.mix.Mix`), samples each
    group by its multiplier, and writes rows left out to the exclusion writer as `rebalance_downsampled`. Repeats
    get ids `<id>#rebalance<k>` and `metadata["rebalance_copy"] = k`."""

    name = "rebalance"
    type = "⚖️ - MIX"

    def __init__(self, config: RebalanceConfig, seed: int = 0, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__()
        self.config, self.seed, self.exclusion_writer = config, seed, exclusion_writer
        self.plan: RebalancePlan | None = None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data)
        self.plan = plan = plan_rebalance(docs, self.config, self.seed)
        logger.info("rebalance by %s (%s):\n%s", self.config.by, self.config.mode, plan.table())
        for g in plan.before:
            self.stat_update(f"tokens_in_{g}", value=plan.before[g])
            self.stat_update(f"tokens_out_{g}", value=plan.after[g])
        with self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext() as writer:
            for doc, n in zip(docs, plan.copies, strict=True):
                self.stat_update("total")
                if n == 0:
                    self.stat_update("dropped_rebalance_downsampled")
                    doc.metadata["filter_reason"] = "rebalance_downsampled"
                    if writer:
                        writer.write(doc, rank)
                    continue
                self.stat_update("kept")
                yield doc
                for k in range(1, n):
                    self.stat_update("repeated")
                    yield Document(doc.text, f"{doc.id}#rebalance{k}", metadata={**doc.metadata, "rebalance_copy": k})


class Curriculum(PipelineStep):
    """Holds its task's rows and yields them in curriculum order, each with `metadata["curriculum_stage"]`;
    `plan.stages` has each stage's rows, tokens and signal range for the dataset card."""

    name = "curriculum"
    type = "⚖️ - MIX"

    def __init__(self, config: CurriculumConfig, seed: int = 0) -> None:
        super().__init__()
        self.config, self.seed = config, seed
        self.plan: CurriculumPlan | None = None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data)
        self.plan = plan = plan_curriculum(docs, self.config, self.seed)
        logger.info("curriculum by %s %s: %s", self.config.signal, self.config.order, plan.stages)
        self.stat_update("missing_signal", value=plan.missing)
        for s, stage in enumerate(plan.stages):
            self.stat_update(f"stage_{s}_tokens", value=stage.tokens)
        for i, s in zip(plan.order, plan.stage, strict=True):
            self.stat_update("total")
            docs[i].metadata["curriculum_stage"] = s
            yield docs[i]
