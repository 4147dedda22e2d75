"""The ledger: one row per input record saying what became of it (`kept`, `rephrased` or `dropped`, with the
stage and reason).

Each filter writes the documents it drops through a LedgerWriter (its datatrove exclusion writer): curate's under
work/ledger/curate/<stage>/<task>, finalize's under work/ledger/finalize/<stage>/<shard>, one file per shard of
work/docs. The ledger stage folds them, one task per group of shards, into OUT/ledger/<task>.parquet:
- each curate drop is already one record's row;
- each surviving document (work/docs) meets the outcome rows of its own shard by a streaming merge: every file of
  one shard lists records in the order of the shard (finalize streams rows in that order), so a document's
  outcomes are the next rows of each file whose record is its own. Memory stays a few batches, whatever the size
  of a shard.
Each task tallies records, fates and drop reasons; `check_complete` compares the records with what the readers
read, and a run that lost or doubled a record fails loudly instead of publishing a ledger with a hole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import ParquetWriter

from rephrase.tally import Tally

DETAIL_KEYS = (
    "language",
    "language_score",
    "quality_score",
    "quality_bucket",
    "perplexity",
    "duplicate_of",
    "similarity",
    "mix",
)
ROW_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("record", pa.string()),
        ("kind", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)
LEDGER_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("record", pa.string()),
        ("fate", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("quality_score", pa.float64()),
        ("quality_bucket", pa.int32()),
        ("action", pa.string()),
        ("prompts", pa.string()),
        ("n_synthetic", pa.int32()),
        ("original_in_dataset", pa.bool_()),
    ]
)
BATCH = 10_000
READ_BATCH = 1000
QUALITY_BINS = 50


class LedgerIncomplete(RuntimeError):
    """The ledger does not have exactly one row per record read: records were lost or doubled on the way."""


class LedgerWriter(ParquetWriter):
    """Writes only the accounting of a document (not its text) under `<folder>/<stage>/<rank>.parquet`, or with
    `by_shard` under `<folder>/<stage>/<shard>.parquet` (the stages after curate, whose rows carry their shard)."""

    def __init__(self, folder: str, stage: str, reason: str | None = None, by_shard: bool = False) -> None:
        name = f"{stage}/${{shard}}.parquet" if by_shard else f"{stage}/${{rank}}.parquet"
        super().__init__(folder, output_filename=name, schema=ROW_SCHEMA, batch_size=1000, max_file_size=-1)
        self.stage, self.fixed_reason = stage, reason

    def _default_adapter(self, document: Document) -> dict:
        meta = document.metadata
        detail = {k: meta[k] for k in DETAIL_KEYS if k in meta}
        return {
            "doc_id": document.id,
            "record": meta.get("record", document.id),
            "kind": meta.get("kind", "original"),
            "stage": self.stage,
            "reason": self.fixed_reason or meta.get("filter_reason") or "unspecified",
            "detail": json.dumps(detail) if detail else None,
        }


def _rows(path: Path, columns: list[str] | None = None) -> Iterator[dict]:
    with pq.ParquetFile(path) as pf:
        for batch in pf.iter_batches(batch_size=READ_BATCH, columns=columns):  # docs' meta holds their rewrites
            yield from batch.to_pylist()


class _Outcomes:
    """One shard's outcome file of one finalize stage, read in order: `take(record)` gives the record's rows."""

    def __init__(self, path: Path) -> None:
        self.path, self._rows, self._next = path, _rows(path), None
        self._advance()

    def _advance(self) -> None:
        self._next = next(self._rows, None)

    def take(self, record: str) -> list[dict]:
        taken = []
        while self._next is not None and self._next["record"] == record:
            taken.append(self._next)
            self._advance()
        return taken

    def check_done(self, shard: str) -> None:
        if self._next is not None:
            raise LedgerIncomplete(
                f"{self.path} names record {self._next['record']}, which is not where work/docs/{shard} has it: "
                "an accounting bug, please report"
            )


def dropped_in_curate(row: dict) -> dict:
    detail = json.loads(row["detail"]) if row["detail"] else {}
    return {
        "doc_id": row["doc_id"],
        "record": row["record"],
        "fate": "dropped",
        "stage": row["stage"],
        "reason": row["reason"],
        "detail": row["detail"],
        "quality_score": detail.get("quality_score"),
        "quality_bucket": detail.get("quality_bucket"),
        "action": "drop" if row["stage"] == "route" else None,
        "prompts": None,
        "n_synthetic": 0,
        "original_in_dataset": False,
    }


def survivor(doc_id: str, meta: dict, rows: list[dict]) -> dict:
    """A document that reached the rows stage: kept, rephrased, or dropped by the first finalize step that did."""
    n_syn = sum(1 for r in rows if r["kind"] == "synthetic" and r["stage"] == "dataset")
    orig_in = any(r["kind"] == "original" and r["stage"] == "dataset" for r in rows)
    failures = "; ".join(f"{f['prompt']}: {f['reason']}" for f in meta.get("rephrase_failures", []))
    entry = {
        "doc_id": doc_id,
        "record": meta["record"],
        "quality_score": meta.get("quality_score"),
        "quality_bucket": meta.get("quality_bucket"),
        "action": meta.get("action"),
        "prompts": ",".join(meta.get("prompts") or []) or None,
        "n_synthetic": n_syn,
        "original_in_dataset": orig_in,
        "stage": None,
        "reason": None,
        "detail": failures or None,
    }
    if n_syn or orig_in:
        entry["fate"] = "rephrased" if n_syn else "kept"
        if failures:
            entry["reason"] = "rephrase_failed"
        return entry
    entry["fate"] = "dropped"
    original = next((r for r in rows if r["kind"] == "original" and r["stage"] != "dataset"), None)
    synthetic = next((r for r in rows if r["kind"] == "synthetic" and r["stage"] != "dataset"), None)
    dropped = original or synthetic
    if dropped is not None:
        entry.update(stage=dropped["stage"], reason=dropped["reason"], detail=dropped["detail"])
    else:
        entry.update(stage="rephrase", reason="no_rewrite_accepted")
    return entry


class FoldLedger(PipelineStep):
    """The ledger stage: task `rank` folds curate's drop files and the work/docs shards numbered rank, rank + N, ...
    into OUT/ledger/<rank>.parquet and tallies fates, drop reasons and quality scores per routing action."""

    name = "ledger"
    type = "📒 - LEDGER"

    def __init__(self, work: str, out: str, tallies: str) -> None:
        super().__init__()
        self.work, self.out, self.tallies = Path(work), Path(out), tallies

    def entries(self, rank: int, world_size: int) -> Iterator[dict]:
        curate = sorted((self.work / "ledger" / "curate").glob("*/*.parquet"))
        for path in curate[rank::world_size]:
            for row in _rows(path):
                yield dropped_in_curate(row)
        docs = sorted((self.work / "docs").glob("*.parquet"))
        strays = {p.stem for p in (self.work / "ledger" / "finalize").glob("*/*.parquet")} - {p.stem for p in docs}
        if strays:
            raise LedgerIncomplete(
                f"work/ledger/finalize has outcomes for shards {sorted(strays)}, which work/docs does not have: "
                "their records would be missing from the ledger. An accounting bug, please report"
            )
        for path in docs[rank::world_size]:
            shard = path.name.removesuffix(".parquet")
            outcomes = [_Outcomes(p) for p in sorted((self.work / "ledger" / "finalize").glob(f"*/{shard}.parquet"))]
            for row in _rows(path, ["id", "meta"]):
                meta = json.loads(row["meta"])
                yield survivor(row["id"], meta, [r for o in outcomes for r in o.take(meta["record"])])
            for o in outcomes:
                o.check_done(shard)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        tally, batch, writer = Tally(), [], None
        target = self.out / f"{rank:05d}.parquet"
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            for entry in self.entries(rank, world_size):
                tally.add("fates", entry["fate"])
                if entry["fate"] == "dropped":
                    tally.add("drops", f"{entry['stage']}/{entry['reason']}")
                if entry["quality_score"] is not None:
                    q = min(QUALITY_BINS - 1, int(entry["quality_score"] * QUALITY_BINS))
                    tally.add("quality_by_action", json.dumps([entry["action"] or "none", q]))
                self.stat_update(entry["fate"])
                batch.append(entry)
                if len(batch) >= BATCH:
                    writer = writer or pq.ParquetWriter(target, LEDGER_SCHEMA)
                    writer.write_table(pa.Table.from_pylist(batch, schema=LEDGER_SCHEMA))
                    batch = []
            if batch or writer is not None:
                writer = writer or pq.ParquetWriter(target, LEDGER_SCHEMA)
                writer.write_table(pa.Table.from_pylist(batch, schema=LEDGER_SCHEMA))
        finally:
            if writer is not None:
                writer.close()
        tally.save(self.tallies, rank)
        yield from ()


def ensure_loadable(folder: Path) -> None:
    """A run whose input had no record still gets a ledger that loads (one empty shard)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.glob("*.parquet")):
        pq.write_table(LEDGER_SCHEMA.empty_table(), folder / "00000.parquet")


def check_complete(ledger_rows: int, records_read: int) -> None:
    if ledger_rows != records_read:
        lost = records_read - ledger_rows
        what = f"{lost} records were lost" if lost > 0 else f"{-lost} records were counted twice"
        raise LedgerIncomplete(
            f"the readers read {records_read} records but the ledger has {ledger_rows} rows: {what} between "
            "reading and the ledger. Nothing was published; please report this with the run's logs/ folder"
        )
