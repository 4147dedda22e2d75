"""The hand-off between the two stages and the dataset's row format.

The curate stage writes each surviving document with all its metadata as one JSON column (`work/docs`), because
the metadata differs between documents (a rewrite list here, none there) and parquet wants one schema per file.
The finalize stage explodes each document into its dataset rows: the original (unless routing said not to keep
it) and one synthetic row per accepted rewrite, each carrying its provenance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import ParquetWriter
from datatrove.pipeline.writers.huggingface import HuggingFaceDatasetWriter
from xxhash import xxh3_64_intdigest

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
    def __init__(self, folder: str) -> None:
        super().__init__(folder, output_filename="${rank}.parquet", schema=WORK_SCHEMA, batch_size=256)

    def _default_adapter(self, document: Document) -> dict:
        return {"id": document.id, "text": document.text, "meta": json.dumps(document.metadata, ensure_ascii=False)}


def work_adapter(self, data: dict, path: str, id_in_file: int | str) -> dict:
    """datatrove reader adapter for work/docs: the JSON column becomes the metadata again."""
    return {"id": data["id"], "text": data["text"], "metadata": json.loads(data["meta"])}


class ExplodeRows(PipelineStep):
    name = "rows"
    type = "🧩 - ROWS"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            meta = doc.metadata
            shared = {
                "record": meta["record"],
                "source_id": doc.id,
                "language": meta.get("language"),
                "quality_score": meta.get("quality_score"),
                "quality_bucket": meta.get("quality_bucket"),
                "perplexity": meta.get("perplexity"),
            }
            if meta.get("keep_original", True):
                self.stat_update("original")
                yield Document(
                    text=doc.text, id=doc.id, metadata={**shared, "kind": "original", "n_tokens": meta.get("n_tokens")}
                )
            for rw in meta.get("rewrites", []):
                self.stat_update("synthetic")
                row_meta = {k: v for k, v in rw.items() if k not in ("text", "output_tokens")}
                yield Document(
                    text=rw["text"],
                    id=f"{doc.id}#{rw['prompt']}",
                    metadata={**shared, **row_meta, "kind": "synthetic", "n_tokens": rw["output_tokens"]},
                )


class SplitRows:
    """Dataset rows in the Hub layout, data/{train,validation}-<rank>.parquet, with one explicit typed schema.

    A row's split is a seeded hash of its `source_id`, so an original and all its rewrites land in the same split:
    a held-out document is never trained on in another register.
    """

    validation_share: float
    seed: int

    def write(self, document: Document, rank: int = 0, **kwargs) -> None:
        source = document.metadata.get("source_id") or document.id
        draw = xxh3_64_intdigest(f"{self.seed}:split:{source}") / 2**64
        split = "validation" if draw < self.validation_share else "train"
        self.stat_update(f"split_{split}")
        super().write(document, rank, split=split, **kwargs)

    def _default_adapter(self, document: Document) -> dict:
        meta = document.metadata
        row = {name: meta.get(name) for name in DATASET_SCHEMA.names}
        row.update(id=document.id, text=document.text, source_record=meta.get("record"))
        return row


class DatasetWriter(SplitRows, ParquetWriter):
    """Shards under OUT/dataset/data, rotated at `max_file_size`; renamed train-00000-of-00003... when the run ends."""

    def __init__(self, folder: str, max_file_size: int, validation_share: float = 0.0, seed: int = 0) -> None:
        ParquetWriter.__init__(
            self,
            folder,
            output_filename="${split}-${rank}.parquet",
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
    ) -> None:
        HuggingFaceDatasetWriter.__init__(
            self,
            repo_id,
            private=private,
            local_working_dir=dataset_dir,
            output_filename="data/${split}-${rank}.parquet",
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


class Tap(PipelineStep):
    """Passes rows on unchanged and records each in the ledger as having reached the dataset."""

    name = "dataset"
    type = "📝 - TAP"

    def __init__(self, writer: ParquetWriter) -> None:
        super().__init__()
        self.writer = writer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.writer as writer:
            for doc in data:
                self.stat_update(doc.metadata.get("kind", "original"))
                doc.metadata["filter_reason"] = "in_dataset"
                writer.write(doc, rank)
                yield doc


def write_empty_dataset(folder: Path) -> None:
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(DATASET_SCHEMA.empty_table(), folder / "empty.parquet")
