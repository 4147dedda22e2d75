"""First filter after reading: every record the readers flagged, and every document too big to handle, leaves
here with its reason, so later stages only ever see usable text."""

from __future__ import annotations

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
        if len(doc.text.encode("utf-8", errors="replace")) > self.max_doc_bytes:
            return False, "too_large"
        return True
