"""Original:synthetic mixing by tokens (WRAP trains on a 1:1 mix of real and rephrased text).

The mix needs the token totals of both kinds before it can choose; rephrase.plan computes them from the count
stage's merged histograms, so this step streams: each row's fate is its kind's rule applied to its seeded draw.
Rows left out go to the ledger as `mix_downsampled`. Upsampling (repeating rows of the scarcer kind) is capped by
`max_upsample` and off by default: repeated tokens are worth less than new ones.
"""

from __future__ import annotations

import contextlib

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.disk_base import DiskWriter

from rephrase.plan import PlanSource, draw, group_of, row_key, row_tokens


class Mix(PipelineStep):
    name = "mix"
    type = "⚖️ - MIX"

    def __init__(self, source: PlanSource, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__()
        self.source, self.exclusion_writer = source, exclusion_writer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        step, seed = None, self.source.seed
        with self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext() as writer:
            for doc in data:
                step = step or self.source.get().mix
                kind, tokens = group_of(doc, "kind"), row_tokens(doc)
                n = step.rule(kind).copies(draw(seed, row_key(doc)))
                self.stat_update("total")
                if n == 0:
                    self.stat_update(f"dropped_{kind}")
                    doc.metadata["filter_reason"] = "mix_downsampled"
                    if writer:
                        writer.write(doc, rank)
                    continue
                self.stat_update(f"kept_{kind}")
                self.stat_update(f"tokens_{kind}", value=tokens * n)
                yield doc
                for copy in range(1, n):
                    self.stat_update(f"repeated_{kind}")
                    yield Document(text=doc.text, id=f"{doc.id}#copy{copy}", metadata={**doc.metadata, "copy": copy})
