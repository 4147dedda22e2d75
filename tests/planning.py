"""Runs rows through the count step into a tally folder and returns the PlanSource the finalize steps read, as the
count and finalize stages do in a run (optionally as several count tasks, to check that sharding changes nothing)."""

from __future__ import annotations

from pathlib import Path

from datatrove.data import Document

from rephrase.plan import CountPools, PlanSource
from rephrase.rebalance import CurriculumConfig, RebalanceConfig


def fresh(docs: list[Document]) -> list[Document]:
    return [Document(d.text, d.id, metadata=dict(d.metadata)) for d in docs]


def planned(
    docs: list[Document],
    folder: Path,
    share: float | None = None,
    max_upsample: float = 1.0,
    rebalance: list[RebalanceConfig] | None = None,
    curriculum: CurriculumConfig | None = None,
    seed: int = 0,
    tasks: int = 1,
) -> PlanSource:
    source = PlanSource(str(folder), share, max_upsample, rebalance or [], curriculum, seed)
    for rank in range(tasks):
        list(CountPools(source).run(iter(fresh(docs[rank::tasks])), rank, tasks))
    return PlanSource(str(folder), share, max_upsample, rebalance or [], curriculum, seed)
