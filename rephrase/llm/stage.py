"""RephraseStep: the LLM stage as a datatrove step. It wires prompts, the engine, validators and selection.

Every document passes through (so the step also counts its tokens for mixing); documents routed to `rephrase`
get one generation call per prompt, batched across documents so the engine sees large batches and the n
candidates of a document share one prefill. Results are recorded on the document, never dropped here: a rewrite
that fails every validator, a document too long for the context, or an engine error becomes a recorded failure
that the ledger turns into a reason.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched
from tqdm import tqdm

from rephrase.config import LLMConfig, SamplingConfig, ValidatorConfig
from rephrase.llm.prompts import Prompt
from rephrase.llm.selection import select
from rephrase.llm.validators import VALIDATORS, Validator


def build_validators(configs: list[ValidatorConfig]) -> list[Validator]:
    return [VALIDATORS.build(c.use, **c.params) for c in configs]


class RephraseStep(PipelineStep):
    name = "rephrase"
    type = "🤖 - LLM"

    def __init__(
        self,
        llm: LLMConfig,
        sampling: SamplingConfig,
        prompts: dict[str, Prompt],
        validators: list[ValidatorConfig],
        batch_size: int,
        max_input_tokens: int,
        seed: int,
        server_log: str | None = None,
    ) -> None:
        super().__init__()
        self.llm, self.sampling, self.prompts = llm, sampling, prompts
        self.validator_configs = validators
        build_validators(validators)  # fail at assembly, not inside a worker
        for prompt in prompts.values():
            build_validators([ValidatorConfig(**v) for v in prompt.spec.validators])
        self.batch_size, self.max_input_tokens, self.seed = batch_size, max_input_tokens, seed
        self.server_log = server_log

    def _engine(self):
        from rephrase.llm.engine import build_engine
        from rephrase.models import resolve_model

        return build_engine(
            self.llm.engine,
            resolve_model(self.llm.model),
            engine_args=self.llm.engine_args,
            server_url=self.llm.server_url,
            request_timeout_s=self.llm.request_timeout_s,
            max_concurrency=self.llm.max_concurrency,
            max_retries=self.llm.max_retries,
            seed=self.seed,
            log_path=self.server_log,
        )

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from transformers import AutoTokenizer

        from rephrase.models import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.llm.model))
        validators = build_validators(self.validator_configs)
        engine = None
        progress = tqdm(desc=f"rephrase [task {rank}]", unit="doc", disable=None, dynamic_ncols=True)
        try:
            for batch in batched(data, self.batch_size):
                jobs: dict[str, list[Document]] = defaultdict(list)
                lengths = tokenizer([d.text for d in batch], add_special_tokens=False)["input_ids"]
                for doc, ids in zip(batch, lengths, strict=True):
                    self.stat_update("total")
                    doc.metadata.update(n_tokens=len(ids), rewrites=[], rephrase_failures=[])
                    if doc.metadata.get("action") != "rephrase":
                        continue
                    for name in doc.metadata["prompts"]:
                        if len(ids) > self.max_input_tokens:
                            self._fail(doc, self.prompts[name], "too_long_for_context")
                        else:
                            jobs[name].append(doc)
                            self.stat_update("n_tokens_in", value=len(ids))
                for name, docs in jobs.items():
                    if engine is None:
                        engine = self._engine()
                    self._rewrite(engine, self.prompts[name], docs, validators)
                progress.update(len(batch))
                progress.set_postfix(
                    accepted=self.stats["accepted"].total, out_tok=self.stats["output_tokens"].total, refresh=False
                )
                yield from batch
        finally:
            progress.close()
            if engine is not None:
                engine.close()

    def _fail(self, doc: Document, prompt: Prompt, reason: str) -> None:
        self.stat_update(f"failed_{reason.split(',')[0]}")
        doc.metadata["rephrase_failures"].append({"prompt": prompt.ref, "reason": reason})

    def _rewrite(self, engine, prompt: Prompt, docs: list[Document], validators: list[Validator]) -> None:
        from rephrase.llm.engine import Sampling

        s = prompt.spec.sampling
        sampling = Sampling(
            temperature=s.temperature if s.temperature is not None else self.sampling.temperature,
            top_p=s.top_p if s.top_p is not None else self.sampling.top_p,
            max_tokens=s.max_tokens if s.max_tokens is not None else self.sampling.max_tokens,
            seed=self.seed,
        )
        checks = validators + build_validators([ValidatorConfig(**v) for v in prompt.spec.validators])
        start = time.perf_counter()
        with self.track_time(f"generate_{prompt.spec.name}"):
            outputs = engine.generate([prompt.messages(d.text) for d in docs], n=self.sampling.n, sampling=sampling)
        self.stat_update("generate_seconds", value=round(time.perf_counter() - start, 3))
        for doc, result in zip(docs, outputs, strict=True):
            self.stat_update("requests")
            if result.error:
                self._fail(doc, prompt, "llm_error")
                doc.metadata["rephrase_failures"][-1]["detail"] = result.error[:500]
                continue
            candidates = result.completions
            self.stat_update("candidates", value=len(candidates))
            self.stat_update("output_tokens", value=sum(c.output_tokens for c in candidates))
            pick = select(doc.text, candidates, checks)
            for reason, count in pick.failures.items():
                self.stat_update(f"rejected_{reason}", value=count)
            if not pick.accepted:
                self._fail(doc, prompt, pick.reason())
                continue
            self.stat_update("accepted")
            chosen = candidates[pick.index]
            doc.metadata["rewrites"].append(
                {
                    "text": chosen.text.strip(),
                    "prompt": prompt.ref,
                    "prompt_hash": prompt.hash,
                    "model": engine.model_id,
                    "model_revision": engine.model_revision,
                    "sampling": json.dumps({**sampling.__dict__, "n": self.sampling.n}),
                    "candidate_index": pick.index,
                    "attempts": 1,
                    "output_tokens": chosen.output_tokens,
                    "validators": json.dumps({k: round(v.score, 4) for k, v in pick.verdicts[pick.index].items()}),
                }
            )
