"""MinHash near-dedup over original and synthetic rows together, on datatrove's own MinHash steps.

Exact dedup misses a page copied with one word changed, and it misses "template collapse": a model that answers
many documents with the same scaffold and a few words swapped. MinHash-LSH catches both at linear cost: each row
gets `num_buckets * hashes_per_bucket` min-hashes of its word n-gram shingles, cut into b bands (`num_buckets`) of
r rows (`hashes_per_bucket`). Two rows become a duplicate pair when all r hashes of any band agree, which happens
with probability 1 - (1 - J^r)^b for shingle-set Jaccard J: an S-curve whose midpoint is about (1/b)^(1/r).
With FineWeb's b=14, r=8 that is 0.72: pairs at J=0.9 are caught 99.9% of the time, J=0.8 92%, J=0.6 21%.
More bands lower the threshold (recall up, more false pairs, more bucket files); more rows per band make the
curve steeper and move it up.

Jaccard is over shingles, not words: substituting a share p of the words leaves about s = (1-p)^n of the n-gram
shingles intact, so J = s/(2-s). With n=5, p=1% gives J=0.91 (always caught), 2% 0.82 (~97%), 5% 0.63 (~30%),
10% 0.42 (~1%). Short rows weigh one edit more: one word changed in a 40-word lead removes 5 of 36 shingles (J=0.76,
~80%). Shorter n-grams tolerate more edits (n=3: 5% gives J=0.75) but let unrelated text share more shingles.

Stages (run in order by rephrase.executors, each after the one before):
  signatures  N tasks           rows -> [exact dups out] -> RowIndex (row key, shard, position per task position)
                                -> MinhashDedupSignature
  buckets     num_buckets tasks MinhashDedupBuckets: pairs of rows sharing a band
  cluster     1 task            MinhashDedupCluster (union-find) -> ResolveTwins: twins/twins.parquet
and then NearDuplicates in any later stage, with any task layout. The cluster task holds only the rows that have a
near-duplicate (union-find over pairs, as datatrove's), not the corpus.

datatrove's own last step (MinhashDedupFilter) is not used: it finds rows by (task, position), so the reading
stage would have to shard rows exactly as the signature stage did; it keeps the union-find root, so whether an
original or its rewrite survives depends on union order; and it names no twin. ResolveTwins maps positions to row
keys once, through the index RowIndex wrote in the same pass as the signatures, and keeps per cluster the original
before any synthetic row, then the first in (shard, position) order: the same row whatever the number of tasks.
Rows are named by their unique key (input record), never by input id, which two files may share. Rows with fewer
than n_grams words get no signature and are never near-dups (exact dedup still sees them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolder, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import minhash as dt
from datatrove.pipeline.writers import ParquetWriter
from pydantic import BaseModel, ConfigDict, Field

from filters.dedup import LISTED_SCHEMA, DropListed

INDEX_SCHEMA = pa.schema(
    [("key", pa.string()), ("id", pa.string()), ("kind", pa.string()), ("shard", pa.string()), ("pos", pa.int64())]
)
TWINS_DIR = "twins"


class MinhashConfig(BaseModel):
    """`dedup.minhash` in a run config. The defaults are FineWeb's (5-grams, 14 bands x 8 rows: J >= ~0.72)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="Near-dedup rows (originals and rewrites together) before the mix.")
    n_grams: int = Field(
        5, ge=1, le=32, description="Words per shingle. Smaller tolerates more edits but unrelated texts share more."
    )
    num_buckets: int = Field(
        14, ge=1, le=256, description="LSH bands b: more lower the Jaccard threshold (1/b)^(1/r). One task each."
    )
    hashes_per_bucket: int = Field(
        8, ge=1, le=64, description="Hashes per band r: more raise the threshold (1/b)^(1/r) and sharpen it."
    )
    seed: int = Field(1, description="Seeds the hash permutations; every task derives the same ones from it.")
    language: str = Field(
        "en", description="datatrove word tokenizer for shingling (spaCy blank model, offline), e.g. en, de, zh."
    )


def jaccard_threshold(num_buckets: int, hashes_per_bucket: int) -> float:
    """Jaccard similarity at which a pair is about as likely caught as not: (1/b)^(1/r)."""
    return (1 / num_buckets) ** (1 / hashes_per_bucket)


def catch_probability(jaccard: float, num_buckets: int, hashes_per_bucket: int) -> float:
    """Chance that a pair at this shingle Jaccard agrees on at least one whole band: 1 - (1 - J^r)^b."""
    return 1 - (1 - jaccard**hashes_per_bucket) ** num_buckets


def datatrove_config(cfg: MinhashConfig) -> dt.MinhashConfig:
    return dt.MinhashConfig(
        n_grams=cfg.n_grams, num_buckets=cfg.num_buckets, hashes_per_bucket=cfg.hashes_per_bucket, seed=cfg.seed
    )


class RowIndex(ParquetWriter):
    """Passes rows on and writes `index/<task>.parquet`: row i is the key, id, kind, shard and position in the
    shard of the task's i-th row.

    The signature step numbers rows by their position in its input; this writer sits right before it in the same
    pipeline, so both see the same rows in the same order whatever the reader's sharding.
    """

    name = "minhash_index"

    def __init__(self, folder: str) -> None:
        super().__init__(folder, output_filename="${rank}.parquet", schema=INDEX_SCHEMA, max_file_size=-1)

    def _default_adapter(self, document: Document) -> dict:
        meta = document.metadata
        return {
            "key": meta["key"],
            "id": document.id,
            "kind": meta.get("kind", "original"),
            "shard": meta["shard"],
            "pos": meta["row_pos"],
        }


class ResolveTwins(PipelineStep):
    """After MinhashDedupCluster: one row per removed row, naming the member of its cluster that is kept.

    Holds only cluster members in memory (the index is read in batches), so memory follows the number of
    near-duplicates, not the corpus.
    """

    name = "minhash_twins"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size != 1:
            raise ValueError(f"{self.name} resolves all clusters at once: run it in 1 task, not {world_size}")
        folder = get_datafolder(self.folder)
        # cluster id -> members as (is_synthetic, shard, position, key, id, kind): sorting puts the keeper first
        members: dict[int, list[tuple[bool, str, int, str, str, str]]] = defaultdict(list)
        with self.track_time():
            for name in folder.list_files("clusters", glob_pattern="*.clusters"):
                task = int(Path(name).name.removesuffix(".clusters"))
                with folder.open(name, "rb") as f:
                    pairs = np.frombuffer(f.read(), dtype="<u4").reshape(-1, 2)  # (position, cluster id)
                pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
                for (_, cluster), (key, row_id, kind, shard, pos) in zip(
                    pairs.tolist(), _index_rows(folder, task, pairs[:, 0]), strict=True
                ):
                    members[cluster].append((kind == "synthetic", shard, pos, key, row_id, kind))
            twins = []
            for cluster in members.values():
                kept, *removed = sorted(cluster)
                self.stat_update("clusters")
                if kept[0]:
                    self.stat_update("clusters_all_synthetic")
                for _, shard, _, key, _, kind in removed:
                    self.stat_update(f"duplicate_{kind}")
                    twins.append({"shard": shard, "key": key, "duplicate_of": kept[4], "kind": kind})
            if len({t["key"] for t in twins}) != len(twins):
                raise ValueError("row keys repeat among near-duplicates: an accounting bug, please report")
            twins.sort(key=lambda t: t["shard"])
            with folder.open(f"{TWINS_DIR}/twins.parquet", "wb") as f:
                pq.write_table(pa.Table.from_pylist(twins, schema=LISTED_SCHEMA), f)
        yield from ()


def _index_rows(folder: DataFolder, task: int, positions: np.ndarray) -> Iterator[tuple]:
    """(key, id, kind, shard, pos) at each of the given ascending positions of one task's index, read in batches."""
    start, done = 0, 0
    columns = INDEX_SCHEMA.names
    with folder.open(f"index/{task:05d}.parquet", "rb") as f, pq.ParquetFile(f) as pf:
        for batch in pf.iter_batches(batch_size=65_536, columns=columns):
            end = int(np.searchsorted(positions, start + batch.num_rows))
            if end > done:
                offsets = pa.array(positions[done:end] - start)
                yield from zip(*(batch.column(c).take(offsets).to_pylist() for c in columns), strict=True)
            start, done = start + batch.num_rows, end
    if done < len(positions):
        raise ValueError(f"index of task {task} has {start} rows but the clusters name row {positions[-1]}: rerun")


class NearDuplicates(DropListed):
    """Drops rows that ResolveTwins listed, with reason `near_duplicate` and `duplicate_of` = the kept row's id.
    Point it at `<minhash folder>/twins`."""

    name = "near_dedup"
    reason = "near_duplicate"
    made_by = "the minhash stages (signatures, buckets, cluster)"


@dataclass(frozen=True)
class MinhashStage:
    name: str
    steps: list[PipelineStep]
    tasks: int


def minhash_stages(cfg: MinhashConfig, rows: list[PipelineStep], folder: str, tasks: int) -> list[MinhashStage]:
    """The three stages that turn the rows the `rows` steps yield into `<folder>/twins/`, in run order.

    tasks: how many tasks the signature stage splits the rows into (the reader shards by task); buckets always
    runs one task per band and cluster one task.
    """
    dt_cfg = datatrove_config(cfg)
    return [
        MinhashStage(
            "signatures",
            [
                *rows,
                RowIndex(f"{folder}/index"),
                dt.MinhashDedupSignature(f"{folder}/signatures", config=dt_cfg, language=cfg.language),
            ],
            tasks,
        ),
        MinhashStage(
            "buckets",
            [dt.MinhashDedupBuckets(f"{folder}/signatures", f"{folder}/buckets", config=dt_cfg)],
            cfg.num_buckets,
        ),
        MinhashStage(
            "cluster",
            [
                dt.MinhashDedupCluster(f"{folder}/buckets", f"{folder}/clusters", config=dt_cfg, save_cluster_id=True),
                ResolveTwins(folder),
            ],
            1,
        ),
    ]
