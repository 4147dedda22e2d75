"""The hand-off between the two stages and the dataset's row format.

The curate stage writes each surviving document with all its metadata as one JSON column (`work/docs`), because
the metadata differs between documents (a rewrite list here, none there) and parquet wants one schema per file.
The rows stage explodes each document into its dataset rows: the original (unless routing said not to keep it)
and one synthetic row per accepted rewrite, each carrying its provenance.

Every stage after curate works shard by shard: a shard is one file of work/docs (one curate task's output), its
rows go to work/rows/<shard>.parquet, and every list a dedup stage makes and every ledger row finalize writes is
filed under the shard, so a task only ever reads the parts of those lists that concern its own shards. A row is
named by its `key` (the input record, `record#prompt` for a rewrite: unique across files, unlike input ids) and
placed by (`shard`, `row_pos`), which orders rows the same way whatever the task layout.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import ParquetWriter
from datatrove.pipeline.writers.huggingface import HuggingFaceDatasetWriter
from xxhash import xxh3_64_intdigest

from rephrase.tally import Tally

WORK_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("meta", pa.string())])

DATASET_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("kind", pa.string()),
        ("source_id", pa.string()),
        ("source_record", pa.string()),
        ("prompt", pa.string()),
        ("prompt_hash", pa.string()),
        ("model", pa.string()),
        ("model_revision", pa.string()),
        ("language", pa.string()),
        ("quality_score", pa.float64()),
        ("quality_bucket", pa.int32()),
        ("perplexity", pa.float64()),
        ("semantic_cluster", pa.int32()),
        ("curriculum_stage", pa.int32()),
        ("n_tokens", pa.int64()),
        ("sampling", pa.string()),
        ("candidate_index", pa.int32()),
        ("attempts", pa.int32()),
        ("chunks", pa.int32()),
        ("validators", pa.string()),
    ]
)


class WorkWriter(ParquetWriter):
    """work/docs (one file per task: the run's shards) or, with `by_shard`, work/rows (one file per shard)."""

    def __init__(self, folder: str, by_shard: bool = False) -> None:
        name = "${shard}.parquet" if by_shard else "${rank}.parquet"
        # no rotation (datatrove's default rotates at 5 GB with a 000_ prefix): later stages find shards by name
        super().__init__(folder, output_filename=name, schema=WORK_SCHEMA, batch_size=256, max_file_size=-1)

    def _default_adapter(self, document: Document) -> dict:
        # default=str: input fields (metadata["input"]) may be Parquet timestamps, decimals or bytes
        meta = json.dumps(document.metadata, ensure_ascii=False, default=str)
        return {"id": document.id, "text": document.text, "meta": meta}


def shard_of(path: str) -> str:
    """The shard a work file belongs to: its name without the suffix (work/docs/00003.parquet -> 00003)."""
    return Path(path).name.removesuffix(".parquet")


def work_adapter(self, data: dict, path: str, id_in_file: int | str) -> dict:
    """datatrove reader adapter for work/docs and work/rows: the JSON column becomes the metadata again, and a
    document learns its shard from the file it is read from (always: a document the LLM stage read from
    work/filtered/00002 carries that file's shard, but lives in the LLM task's work/docs file)."""
    meta = json.loads(data["meta"])
    meta["shard"] = shard_of(path)
    return {"id": data["id"], "text": data["text"], "metadata": meta}


class WorkReader(ParquetReader):
    """work/docs, work/filtered or work/rows, shard by shard; a folder without files (every record was dropped
    before it) is an empty input, where datatrove's reader raises."""

    def __init__(self, folder: str) -> None:
        super().__init__(folder, adapter=work_adapter, glob_pattern="*.parquet")

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self.data_folder.list_files(glob_pattern=self.glob_pattern):
            yield from super().run(data, rank, world_size)


class RowsMeta(PipelineStep):
    """work/rows without their text (documents with an empty text and the row's metadata), for the count stage:
    a tenth of the bytes. Shards files across tasks as datatrove's readers do."""

    name = "rows_meta"
    type = "📖 - READER"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import pyarrow.parquet as pq
        from datatrove.io import get_datafolder

        folder = get_datafolder(self.folder)
        for path in folder.get_shard(rank, world_size, glob_pattern="*.parquet"):
            with folder.open(path, "rb") as f, pq.ParquetFile(f) as pf:
                for batch in pf.iter_batches(batch_size=1000, columns=["id", "meta"]):
                    ids, metas = batch.column("id").to_pylist(), batch.column("meta").to_pylist()
                    for row_id, meta in zip(ids, metas, strict=True):
                        self.stat_update("rows")
                        yield Document(text="", id=row_id, metadata=json.loads(meta))


class ExplodeRows(PipelineStep):
    """One row per original kept and per accepted rewrite, each with its key, shard and position in the shard.

    A row's id is its key: the input record (`file:line`) for an original, `record#prompt` for a rewrite. Input
    ids are kept in `source_id` but never identify a row: two input files that both number their records 1, 2, 3
    are common, and a lookup by input id then finds the wrong document."""

    name = "rows"
    type = "🧩 - ROWS"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        positions: Counter = Counter()
        for doc in data:
            meta = doc.metadata
            shard = meta["shard"]
            shared = {
                "record": meta["record"],
                "shard": shard,
                "source_id": doc.id,
                "language": meta.get("language"),
                "quality_score": meta.get("quality_score"),
                "quality_bucket": meta.get("quality_bucket"),
                "perplexity": meta.get("perplexity"),
            }
            rows = []
            if meta.get("keep_original", True):
                tokens = meta.get("n_tokens")
                tokens = len(doc.text.split()) if tokens is None else tokens
                record = meta["record"]
                rows.append((doc.text, record, {"key": record, "kind": "original", "n_tokens": tokens}))
            for rw in meta.get("rewrites", []):
                row_meta = {k: v for k, v in rw.items() if k not in ("text", "output_tokens")}
                key = f"{meta['record']}#{rw['prompt']}"
                row_meta.update(key=key, kind="synthetic", n_tokens=rw["output_tokens"])
                rows.append((rw["text"], key, row_meta))
            for text, row_id, row_meta in rows:
                self.stat_update(row_meta["kind"])
                yield Document(text=text, id=row_id, metadata={**shared, **row_meta, "row_pos": positions[shard]})
                positions[shard] += 1


def split_of(document: Document, validation_share: float, seed: int) -> str:
    """A seeded hash of the row's input record, so an original and all its rewrites land in the same split: a
    held-out document is never trained on in another register."""
    source = document.metadata.get("record") or document.id
    draw = xxh3_64_intdigest(f"{seed}:split:{source}") / 2**64
    return "validation" if draw < validation_share else "train"


def shard_name(curriculum: bool) -> str:
    """Dataset shard names: one folder per curriculum stage, so reading files in name order is curriculum order."""
    return "stage-${stage}/${split}-${rank}.parquet" if curriculum else "${split}-${rank}.parquet"


class SplitRows:
    """Dataset rows in the Hub layout, data/{train,validation}-<rank>.parquet (data/stage-<s>/... with a curriculum),
    with one explicit typed schema."""

    validation_share: float
    seed: int

    def write(self, document: Document, rank: int = 0, **kwargs) -> None:
        split = split_of(document, self.validation_share, self.seed)
        self.stat_update(f"split_{split}")
        stage = document.metadata.get("curriculum_stage")
        super().write(document, rank, split=split, stage=f"{stage or 0:04d}", **kwargs)

    def _default_adapter(self, document: Document) -> dict:
        meta = document.metadata
        row = {name: meta.get(name) for name in DATASET_SCHEMA.names}
        row.update(id=document.id, text=document.text, source_record=meta.get("record"))
        return row


class DatasetWriter(SplitRows, ParquetWriter):
    """Shards under OUT/dataset/data, rotated at `max_file_size`; renamed train-00000-of-00003... when the run ends."""

    def __init__(
        self, folder: str, max_file_size: int, validation_share: float = 0.0, seed: int = 0, curriculum: bool = False
    ) -> None:
        ParquetWriter.__init__(
            self,
            folder,
            output_filename=shard_name(curriculum),
            schema=DATASET_SCHEMA,
            max_file_size=max_file_size,
            batch_size=500,
        )
        self.validation_share, self.seed = validation_share, seed


class HubDatasetWriter(SplitRows, HuggingFaceDatasetWriter):
    """`output.push.stream`: the same shards, sent to the Hub by datatrove's writer as they are written (each
    rotated shard pre-uploaded at once, one commit per task when it ends), so a long run's data is on the Hub
    without a second upload at the end. The local copy stays (cleanup off), under the name the Hub has: the
    end-of-run push then finds every shard already there, byte for byte, and only commits the card and removes
    stale shards. The repo and branch must exist first (rephrase.hub.prepare_repo)."""

    def __init__(
        self,
        dataset_dir: str,
        repo_id: str,
        private: bool,
        revision: str | None,
        max_file_size: int,
        validation_share: float = 0.0,
        seed: int = 0,
        curriculum: bool = False,
    ) -> None:
        HuggingFaceDatasetWriter.__init__(
            self,
            repo_id,
            private=private,
            local_working_dir=dataset_dir,
            output_filename="data/" + shard_name(curriculum),
            cleanup=False,
            schema=DATASET_SCHEMA,
            max_file_size=max_file_size,
            revision=revision,
        )
        self.batch_size = 500
        self.validation_share, self.seed = validation_share, seed

    @staticmethod
    def is_retryable_hf_hub_error(error: Exception) -> bool:
        """datatrove matches message text, and a 429 or 503 whose body says something else is not retried: the
        HTTP status is the reliable signal (the same statuses `rephrase push` retries)."""
        from rephrase.hub import RETRY_STATUSES

        response = getattr(error, "response", None)
        if getattr(response, "status_code", None) in RETRY_STATUSES:
            return True
        return HuggingFaceDatasetWriter.is_retryable_hf_hub_error(error)


class DatasetTap(PipelineStep):
    """Passes rows on unchanged, records each in the ledger as having reached the dataset, and tallies what the
    card and stats.json report (rows, tokens per kind, prompt, quality bucket, input file, split), so the end of a
    run never reads the dataset back."""

    name = "dataset"
    type = "📝 - TAP"

    def __init__(self, writer: ParquetWriter, tallies: str, validation_share: float, seed: int) -> None:
        super().__init__()
        self.writer, self.tallies = writer, tallies
        self.validation_share, self.seed = validation_share, seed

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        tally = Tally()
        with self.writer as writer:
            for doc in data:
                meta = doc.metadata
                kind, tokens = meta.get("kind", "original"), int(meta.get("n_tokens") or 0)
                self.stat_update(kind)
                tally.add("rows", kind)
                tally.add("tokens", kind, tokens)
                tally.add("tokens_by_prompt", meta.get("prompt") or "original", tokens)
                tally.add("tokens_by_bucket", str(meta.get("quality_bucket")), tokens)
                tally.add("tokens_by_source_file", (meta.get("record") or "?").rsplit(":", 1)[0], tokens)
                tally.add("splits", split_of(doc, self.validation_share, self.seed))
                if meta.get("prompt"):
                    tally.add("rows_by_prompt", meta["prompt"])
                if (stage := meta.get("curriculum_stage")) is not None:
                    tally.add("curriculum_tokens", str(stage), tokens)
                meta["filter_reason"] = "in_dataset"
                writer.write(doc, rank)
                yield doc
        tally.save(self.tallies, rank)


def write_empty_dataset(folder: Path) -> None:
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(DATASET_SCHEMA.empty_table(), folder / "empty.parquet")
