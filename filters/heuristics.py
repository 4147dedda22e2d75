"""datatrove's heuristic filters (Gopher, C4, FineWeb), built from config and checked before anything runs.

Each filter keeps its own reason codes (`gopher_short_doc`, `line_punct_ratio`, ...) so the ledger says which rule
removed a page. English tokenisation is spaCy's blank pipeline: no model or nltk data is downloaded.
"""

from __future__ import annotations

import inspect

from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

HEURISTICS: dict[str, type[BaseFilter]] = {
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "c4_quality": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
}


def check_params(use: str, params: dict) -> None:
    """Fail at start with the bad key and the accepted ones, not with a TypeError inside a worker."""
    accepted = set(inspect.signature(HEURISTICS[use].__init__).parameters) - {"self", "exclusion_writer"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"heuristics {use}: unknown parameter(s) {unknown}; accepted: {sorted(accepted)}")


def build_heuristic(use: str, params: dict, exclusion_writer: DiskWriter | None = None) -> BaseFilter:
    check_params(use, params)
    return HEURISTICS[use](exclusion_writer=exclusion_writer, **params)
