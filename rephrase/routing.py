"""Routing by quality: the first rule whose score range (and bucket and perplexity ranges, if it names them)
contains the document decides its action.

`drop` leaves the pipeline with a ledger reason; `keep` passes the original on; `rephrase` names the prompts that
will rewrite it and whether the original stays in the dataset beside its rewrites.
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from rephrase.config import RouteRule


def _matches(rule: RouteRule, score: float | None, bucket: int | None, perplexity: float | None) -> bool:
    """Without a quality score (no classifier configured) only rules covering the whole range apply."""
    if rule.by_perplexity:
        if perplexity is None:
            return False
        lo, hi = rule.min_perplexity or 0.0, rule.max_perplexity or float("inf")
        if not lo <= perplexity <= hi:
            return False
    if score is None:
        return rule.min_score == 0.0 and rule.max_score == 1.0 and not rule.by_bucket
    if not rule.min_score <= score <= rule.max_score:
        return False
    lo = rule.min_bucket if rule.min_bucket is not None else 0
    hi = rule.max_bucket if rule.max_bucket is not None else bucket
    return lo <= bucket <= hi


class Router(BaseFilter):
    name = "route"

    def __init__(self, rules: list[RouteRule], exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer)
        self.rules = rules

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        meta = doc.metadata
        score, bucket, perplexity = meta.get("quality_score"), meta.get("quality_bucket"), meta.get("perplexity")
        rule = next((r for r in self.rules if _matches(r, score, bucket, perplexity)), None)
        action = rule.action if rule else "keep"
        doc.metadata["action"] = action
        self.stat_update(f"action_{action}")
        if action == "drop":
            return False, "low_quality" if score is not None else "routed_drop"
        doc.metadata["prompts"] = rule.prompt_names if rule else []
        doc.metadata["keep_original"] = rule.keep_original if rule and action == "rephrase" else True
        for prompt in doc.metadata["prompts"]:
            self.stat_update(f"prompt_{prompt}")
        return True
