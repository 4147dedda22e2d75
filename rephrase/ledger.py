"""The ledger: one row per input record saying what became of it (`kept`, `rephrased` or `dropped`, with the
stage and reason). Each filter writes the documents it drops through a LedgerWriter (its datatrove exclusion
writer); the finalize stage writes each row's outcome; `build_ledger` folds them into one row per record."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from datatrove.data import Document
from datatrove.pipeline.writers import ParquetWriter

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


class LedgerWriter(ParquetWriter):
    """Writes only the accounting of a document (not its text) under `<folder>/<stage>/<rank>.parquet`."""

    def __init__(self, folder: str, stage: str, reason: str | None = None) -> None:
        super().__init__(folder, output_filename=f"{stage}/${{rank}}.parquet", schema=ROW_SCHEMA, batch_size=1000)
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


def _read_rows(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for f in sorted(folder.rglob("*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def build_ledger(work: Path, docs: list[dict], out_file: Path) -> list[dict]:
    """Fold stage drops, surviving documents and row outcomes into one row per input record."""
    import pyarrow.parquet as pq

    ledger = []
    for row in _read_rows(work / "ledger" / "curate"):
        detail = json.loads(row["detail"]) if row["detail"] else {}
        ledger.append(
            {
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
        )
    outcomes: dict[str, list[dict]] = {}
    for row in _read_rows(work / "ledger" / "finalize"):
        outcomes.setdefault(row["record"], []).append(row)
    for doc in docs:
        meta = doc["meta"]
        rows = outcomes.get(meta["record"], [])
        n_syn = sum(1 for r in rows if r["kind"] == "synthetic" and r["stage"] == "dataset")
        orig_in = any(r["kind"] == "original" and r["stage"] == "dataset" for r in rows)
        failures = "; ".join(f"{f['prompt']}: {f['reason']}" for f in meta.get("rephrase_failures", []))
        entry = {
            "doc_id": doc["id"],
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
        else:
            entry["fate"] = "dropped"
            original = next((r for r in rows if r["kind"] == "original" and r["stage"] != "dataset"), None)
            synthetic = next((r for r in rows if r["kind"] == "synthetic" and r["stage"] != "dataset"), None)
            dropped = original or synthetic
            if dropped is not None:
                entry.update(stage=dropped["stage"], reason=dropped["reason"], detail=dropped["detail"])
            else:
                entry.update(stage="rephrase", reason="no_rewrite_accepted")
        ledger.append(entry)
    records = [r["record"] for r in ledger]
    if len(records) != len(set(records)):
        dupes = sorted({r for r in records if records.count(r) > 1})[:5]
        raise RuntimeError(f"ledger has more than one row for records {dupes}: an accounting bug, please report")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(ledger, schema=LEDGER_SCHEMA), out_file)
    return ledger
