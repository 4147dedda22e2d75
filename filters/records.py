"""First filter after reading: every record the readers flagged, and every document too big to handle, leaves
here with its reason, so later stages only ever see usable text.

A document's size is its text and its metadata as UTF-8 JSON: a record with a short text and a huge metadata field
would otherwise carry megabytes through every stage into work/docs. The readers already refuse records past a few
times `max_doc_bytes` (rephrase.readers), so HTML extraction, which runs before this check, never sees a page the
reader had to hold whole in memory.
"""

from __future__ import annotations

import json

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter


class RecordCheck(BaseFilter):
    name = "input"

    def __init__(self, max_doc_bytes: int, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        self.max_doc_bytes = max_doc_bytes

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if reason := doc.metadata.pop("bad_record", None):
            return False, reason
        if "\x00" in doc.text:
            # NUL bytes break tokenizers and parquet consumers downstream; they carry no text
            doc.text = doc.text.replace("\x00", "")
            self.stat_update("nul_bytes_removed")
        if not doc.text.strip():
            return False, "empty_text"
        if doc_bytes(doc) > self.max_doc_bytes:
            return False, "too_large"
        return True


def doc_bytes(doc: Document) -> int:
    """UTF-8 bytes of the text plus the metadata as work/docs stores it (`default=str` for parquet's dates)."""
    meta = json.dumps(doc.metadata, ensure_ascii=False, default=str)
    return len(doc.text.encode("utf-8", errors="replace")) + len(meta.encode("utf-8", errors="replace"))
