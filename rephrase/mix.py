"""Original:synthetic mixing by tokens (WRAP trains on a 1:1 mix of real and rephrased text).

The mix needs the token totals of both pools before it can choose, so this step holds the rows of its task until
its input ends (the finalize stage runs as one task). Rows are taken in a seeded, hash-based order until the
target share is reached; rows left out go to the ledger as `mix_downsampled`. Upsampling (repeating rows of the
scarcer pool) is capped by `max_upsample` and off by default: repeated tokens are worth less than new ones.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.disk_base import DiskWriter
from xxhash import xxh3_64_intdigest


@dataclass(frozen=True)
class MixPlan:
    keep: set[int]  # indices of rows kept (once)
    repeats: dict[int, int]  # index -> extra copies
    target_share: float | None
    achieved_share: float


def _order(docs: list[Document], seed: int) -> list[int]:
    return sorted(range(len(docs)), key=lambda i: xxh3_64_intdigest(f"{seed}:{docs[i].id}:{i}"))


def plan_mix(docs: list[Document], share: float | None, max_upsample: float, seed: int) -> MixPlan:
    """Choose rows so synthetic tokens / all tokens is as close to `share` as the rows allow."""
    tokens = [int(d.metadata.get("n_tokens") or 0) for d in docs]
    syn = [i for i, d in enumerate(docs) if d.metadata.get("kind") == "synthetic"]
    orig = [i for i, d in enumerate(docs) if d.metadata.get("kind") != "synthetic"]
    s_tok, o_tok = sum(tokens[i] for i in syn), sum(tokens[i] for i in orig)
    everything = MixPlan(set(range(len(docs))), {}, share, s_tok / max(1, s_tok + o_tok))
    if share is None or s_tok == 0 or o_tok == 0 or share in (0.0, 1.0):
        return everything
    repeats: dict[int, int] = {}
    if s_tok / (s_tok + o_tok) < share:
        # too little synthetic: repeat synthetic rows up to the cap, then trim originals to match
        s_budget = min(s_tok * max_upsample, o_tok * share / (1 - share))
        s_total = s_tok
        extra_rounds = int(max_upsample) - 1 + (max_upsample % 1 > 0)
        for _ in range(extra_rounds):
            for i in _order([docs[j] for j in syn], seed):
                idx = syn[i]
                if s_total + tokens[idx] > s_budget:
                    continue
                repeats[idx] = repeats.get(idx, 0) + 1
                s_total += tokens[idx]
        keep_syn, keep_orig = set(syn), _take(docs, orig, tokens, s_total * (1 - share) / share, seed)
    else:
        keep_orig, keep_syn = set(orig), _take(docs, syn, tokens, o_tok * share / (1 - share), seed)
        s_total = sum(tokens[i] for i in keep_syn)
    o_total = sum(tokens[i] for i in keep_orig)
    return MixPlan(keep_syn | keep_orig, repeats, share, s_total / max(1, s_total + o_total))


def _take(docs: list[Document], pool: list[int], tokens: list[int], budget: float, seed: int) -> set[int]:
    """Rows of `pool` in seeded order while they bring the total closer to `budget`; then one pass that drops
    kept rows and one that adds left-out rows, each only where it brings the total closer. On a small corpus a
    single greedy pass can overshoot by most of a row (a few percent of the share); the two passes close that
    gap, still in seeded order, so the choice stays deterministic and unbiased by length."""
    order = [pool[i] for i in _order([docs[j] for j in pool], seed)]
    kept, total = set(), 0
    for idx in order:
        if abs(total + tokens[idx] - budget) < abs(total - budget):
            kept.add(idx)
            total += tokens[idx]
    for idx in order:
        if idx in kept and abs(total - tokens[idx] - budget) < abs(total - budget):
            kept.discard(idx)
            total -= tokens[idx]
    for idx in order:
        if idx not in kept and abs(total + tokens[idx] - budget) < abs(total - budget):
            kept.add(idx)
            total += tokens[idx]
    return kept


class Mix(PipelineStep):
    name = "mix"
    type = "⚖️ - MIX"

    def __init__(
        self, share: float | None, max_upsample: float, seed: int, exclusion_writer: DiskWriter | None = None
    ) -> None:
        super().__init__()
        self.share, self.max_upsample, self.seed = share, max_upsample, seed
        self.exclusion_writer = exclusion_writer
        self.plan: MixPlan | None = None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data)
        self.plan = plan = plan_mix(docs, self.share, self.max_upsample, self.seed)
        with self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext() as writer:
            for i, doc in enumerate(docs):
                kind = doc.metadata.get("kind", "original")
                self.stat_update("total")
                if i not in plan.keep:
                    self.stat_update(f"dropped_{kind}")
                    doc.metadata["filter_reason"] = "mix_downsampled"
                    if writer:
                        writer.write(doc, rank)
                    continue
                self.stat_update(f"kept_{kind}")
                self.stat_update(f"tokens_{kind}", value=int(doc.metadata.get("n_tokens") or 0))
                yield doc
                for copy in range(1, plan.repeats.get(i, 0) + 1):
                    self.stat_update(f"repeated_{kind}")
                    self.stat_update(f"tokens_{kind}", value=int(doc.metadata.get("n_tokens") or 0))
                    yield Document(text=doc.text, id=f"{doc.id}#copy{copy}", metadata={**doc.metadata, "copy": copy})
