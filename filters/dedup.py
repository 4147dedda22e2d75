"""Exact dedup over originals and rewrites together, on datatrove's normalised text (case, punctuation,
whitespace, numbers and dates folded), so trivially different copies collide. The first row seen is kept and
every later copy names it (`duplicate_of`) in the ledger. Held in memory: one 8-byte hash per row."""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.text import simplify_text
from xxhash import xxh3_64_intdigest


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
