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

Curriculum: rows are put into consecutive stages of about equal tokens by a signal (`quality_bucket`,
`quality_score`, `perplexity`, `n_tokens`, ...), ascending or descending, rows without the signal in the last
stage. Stages are discrete: each goes to its own shards (`data/stage-0000/...`), so the dataset is in curriculum
order when its files are read in name order, without any process sorting the corpus; within a stage, rows keep
their input order. Each stage's tokens and signal range go to the dataset card.

Both steps stream: they decide each row from the plan (rephrase.plan), which the count stage's merged token
histograms give before finalize starts. Tokens are `n_tokens` or, for rows without it, whitespace words.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Literal

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.disk_base import DiskWriter
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, model_validator

from rephrase.plan import PlanSource, draw, group_of, row_key, row_tokens, signal_of

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


class Rebalance(PipelineStep):
    """Samples each group by its planned multiplier and writes rows left out to the exclusion writer as
    `rebalance_downsampled`. Repeats get ids `<id>#rebalance<k>` and `metadata["rebalance_copy"] = k`.
    `index`: which rebalancing rule of the config (and of the plan) this step is."""

    name = "rebalance"
    type = "⚖️ - MIX"

    def __init__(self, source: PlanSource, index: int, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__()
        self.source, self.index, self.exclusion_writer = source, index, exclusion_writer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        step, seed = None, self.source.seed
        with self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext() as writer:
            for doc in data:
                if step is None:
                    step = self.source.get().rebalance[self.index]
                    if rank == 0:
                        logger.info("rebalance by %s:\n%s", step.by, step.table())
                group, tokens = group_of(doc, step.by), row_tokens(doc)
                n = step.rule(group).copies(draw(seed, row_key(doc)))
                self.stat_update("total")
                self.stat_update(f"tokens_in_{group}", value=tokens)
                if n == 0:
                    self.stat_update("dropped_rebalance_downsampled")
                    doc.metadata["filter_reason"] = "rebalance_downsampled"
                    if writer:
                        writer.write(doc, rank)
                    continue
                self.stat_update("kept")
                self.stat_update(f"tokens_out_{group}", value=tokens * n)
                yield doc
                for k in range(1, n):
                    self.stat_update("repeated")
                    yield Document(doc.text, f"{doc.id}#rebalance{k}", metadata={**doc.metadata, "rebalance_copy": k})


class Curriculum(PipelineStep):
    """Gives each row its planned `metadata["curriculum_stage"]`; the dataset writer puts each stage in shards of
    its own. Counts rows and tokens per stage and the signal range seen in each."""

    name = "curriculum"
    type = "⚖️ - MIX"

    def __init__(self, source: PlanSource) -> None:
        super().__init__()
        self.source = source

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        plan = None
        for doc in data:
            if plan is None:
                plan = self.source.get().curriculum
            value = signal_of(doc, plan.signal)
            stage = plan.stage(value)
            doc.metadata["curriculum_stage"] = stage
            self.stat_update("total")
            self.stat_update(f"stage_{stage}_tokens", value=row_tokens(doc))
            if value is None:
                self.stat_update("missing_signal")
            yield doc
