"""Exact dedup over originals and rewrites together, on datatrove's normalised text (case, punctuation,
whitespace, numbers and dates folded), so trivially different copies collide; and the filter that drops the rows
any dedup stage listed.

Two forms, for two places:
- `ExactDedup`, inside one curate task: a copy of a document is never sent to the LLM twice. Memory: one 8-byte
  hash per document of the task.
- The sharded form, over all rows of a run, as datatrove's exact dedup works (signatures, then one finder per
  hash partition): `ExactHashes` writes each row's hash into partition `hash % P` while the rows stage writes the
  rows; `ExactFind` (one task per partition) sorts its partition and lists every row but the first of each hash;
  `ExactDuplicates` drops the listed rows in any later stage. datatrove's own filter finds rows by (task, position)
  and so needs the reading stage sharded exactly as the signature stage was; this one matches by the row's unique
  key, and keeps the same row whatever the task layout: originals before rewrites, then the first in (shard,
  position) order, the order MinHash uses too, so the two dedups never keep different members of one group.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers import ParquetWriter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.text import simplify_text
from xxhash import xxh3_64_intdigest

HASH_SCHEMA = pa.schema(
    [
        ("hash", pa.uint64()),
        ("synthetic", pa.bool_()),
        ("shard", pa.string()),
        ("pos", pa.int64()),
        ("key", pa.string()),
        ("id", pa.string()),
    ]
)
LISTED_SCHEMA = pa.schema(
    [("shard", pa.string()), ("key", pa.string()), ("duplicate_of", pa.string()), ("kind", pa.string())]
)


class ExactDedup(BaseFilter):
    name = "dedup"

    def __init__(self, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        self.seen: dict[int, tuple[int, str]] = {}
        self.rows = 0

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        self.rows += 1
        key = xxh3_64_intdigest(simplify_text(doc.text))
        first_row, twin = self.seen.setdefault(key, (self.rows, doc.id))
        if first_row == self.rows:
            return True
        doc.metadata["duplicate_of"] = twin
        self.stat_update(f"duplicate_{doc.metadata.get('kind', 'original')}")
        return False, "exact_duplicate"


class ExactHashes(ParquetWriter):
    """Passes rows on and writes each row's normalised-text hash to `<folder>/<partition>/<rank>.parquet`."""

    name = "exact_hashes"

    def __init__(self, folder: str, partitions: int) -> None:
        super().__init__(folder, output_filename="${part}/${rank}.parquet", schema=HASH_SCHEMA, batch_size=10_000)
        self.partitions = partitions

    def write(self, document: Document, rank: int = 0, **kwargs) -> None:
        digest = xxh3_64_intdigest(simplify_text(document.text))
        document.metadata["_exact_hash"] = digest
        super().write(document, rank, part=f"{digest % self.partitions:05d}", **kwargs)

    def _default_adapter(self, document: Document) -> dict:
        meta = document.metadata
        return {
            "hash": meta.pop("_exact_hash"),
            "synthetic": meta.get("kind") == "synthetic",
            "shard": meta["shard"],
            "pos": meta["row_pos"],
            "key": meta["key"],
            "id": document.id,
        }


class ExactFind(PipelineStep):
    """One task per hash partition: every row but the first of each hash, naming the first (`duplicate_of`).
    Memory: the partition's hashes and keys, about 1/P of the rows' keys, never their text."""

    name = "exact_find"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        folder = get_datafolder(self.folder)
        part = f"hashes/{rank:05d}"
        files = folder.list_files(part, glob_pattern="*.parquet") if folder.isdir(part) else []
        tables = []
        for name in files:
            with folder.open(name, "rb") as f:
                tables.append(pq.read_table(f))
        table = pa.concat_tables(tables) if tables else HASH_SCHEMA.empty_table()
        with self.track_time():
            order = ["hash", "synthetic", "shard", "pos"]
            table = table.sort_by([(c, "ascending") for c in order])
            hashes = table.column("hash").to_numpy()
            starts = np.ones(len(hashes), dtype=bool)
            starts[1:] = hashes[1:] != hashes[:-1]
            first = np.maximum.accumulate(np.where(starts, np.arange(len(hashes)), 0))
            dup = np.flatnonzero(~starts)
            listed = pa.table(
                {
                    "shard": table.column("shard").take(dup),
                    "key": table.column("key").take(dup),
                    "duplicate_of": table.column("id").take(first[dup]),
                    "kind": pc.if_else(table.column("synthetic").take(dup), "synthetic", "original"),
                },
                schema=LISTED_SCHEMA,
            ).sort_by("shard")
        self.stat_update("rows", value=len(hashes))
        self.stat_update("duplicates", value=len(dup))
        with folder.open(f"dups/{rank:05d}.parquet", "wb") as f:
            pq.write_table(listed, f)
        yield from ()


class DropListed(BaseFilter):
    """Drops the rows a dedup stage listed under `folder` (parquet files of shard, key, duplicate_of, ...), naming
    the kept row (`duplicate_of`) in the ledger. The lists are read one shard at a time, when the first row of the
    shard arrives (rows come shard by shard), so memory follows one shard's duplicates, not the corpus's."""

    name = "listed"
    reason = "listed"
    made_by = "the stage that writes it"

    def __init__(self, folder: str, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        self.folder = folder
        self._shard: str | None = None
        self._listed: dict[str, dict] = {}

    def _load(self, shard: str) -> dict[str, dict]:
        if not get_datafolder(self.folder).isdir(""):
            raise FileNotFoundError(f"{self.folder} is missing: run {self.made_by} first")
        dataset = ds.dataset(self.folder, format="parquet")
        table = dataset.to_table(filter=ds.field("shard") == shard)
        return {row.pop("key"): row for row in table.drop_columns(["shard"]).to_pylist()}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        shard = doc.metadata["shard"]
        if shard != self._shard:
            self._shard, self._listed = shard, self._load(shard)
        listed = self._listed.get(doc.metadata["key"])
        if listed is None:
            return True
        doc.metadata.update({k: v for k, v in listed.items() if k != "kind" and v is not None})
        self.stat_update(f"duplicate_{doc.metadata.get('kind', 'original')}")
        return False, self.reason


class ExactDuplicates(DropListed):
    name = "dedup"
    reason = "exact_duplicate"
    made_by = "the exact stage (ExactFind)"
