"""RephraseStep: the LLM stage as a datatrove step. It wires prompts, the engine, validators and selection.

Every document passes through (so the step also counts its tokens for mixing); documents routed to `rephrase`
get one generation call per prompt, batched across documents so the engine sees large batches and the n
candidates of a document share one prefill. Documents whose n candidates all fail are resampled, alone, up to
`resample_rounds` more times at a slightly higher temperature: extra candidates are only paid for where the first
ones failed. Results are recorded on the document, never dropped here: a rewrite that fails every validator, a
document too long for the context, or an engine error becomes a recorded failure that the ledger turns into a
reason. Finished outcomes go to a per-task GenerationLog, so a killed task that reruns does not pay for them again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched
from tqdm import tqdm

from rephrase.config import LLMConfig, SamplingConfig, ValidatorConfig
from rephrase.llm.checkpoint import GenerationLog, outcome_key
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
        checkpoint_dir: str,
        server_log: str | None = None,
    ) -> None:
        super().__init__()
        self.llm, self.sampling, self.prompts = llm, sampling, prompts
        self.validator_configs = validators
        self.checks = {name: self._checks(p) for name, p in prompts.items()}  # fail at assembly, not in a worker
        self.batch_size, self.max_input_tokens, self.seed = batch_size, max_input_tokens, seed
        self.checkpoint_dir, self.server_log = checkpoint_dir, server_log

    def _checks(self, prompt: Prompt) -> list[ValidatorConfig]:
        return [*self.validator_configs, *(ValidatorConfig(**v) for v in prompt.spec.validators)]

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
        log = GenerationLog(Path(self.checkpoint_dir) / f"{rank:05d}.jsonl")
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
                    pending = self._replay(log, self.prompts[name], docs)
                    if pending:
                        engine = engine or self._engine()
                        self._rewrite(engine, self.prompts[name], pending, log)
                progress.update(len(batch))
                progress.set_postfix(
                    accepted=self.stats["accepted"].total, out_tok=self.stats["output_tokens"].total, refresh=False
                )
                yield from batch
        finally:
            progress.close()
            log.close()
            if engine is not None:
                engine.close()

    def _key(self, doc: Document, prompt: Prompt) -> str:
        text_hash = hashlib.sha256(doc.text.encode("utf-8")).hexdigest()
        checks = [c.model_dump() for c in self._checks(prompt)]
        record = doc.metadata.get("record", doc.id)
        return outcome_key(
            record, text_hash, prompt.ref, prompt.hash, self.llm.model, self.sampling.model_dump(), checks
        )

    def _replay(self, log: GenerationLog, prompt: Prompt, docs: list[Document]) -> list[tuple[Document, str]]:
        """Apply outcomes finished by an earlier (killed) run of this task; return what still needs the model."""
        pending = []
        for doc in docs:
            key = self._key(doc, prompt)
            if (outcome := log.get(key)) is None:
                pending.append((doc, key))
                continue
            self.stat_update("replayed_from_checkpoint")
            self._apply(doc, prompt, outcome)
        return pending

    def _apply(self, doc: Document, prompt: Prompt, outcome: dict) -> None:
        if "rewrite" in outcome:
            self.stat_update("accepted")
            doc.metadata["rewrites"].append(outcome["rewrite"])
        else:
            self._fail(doc, prompt, outcome["failure"])

    def _fail(self, doc: Document, prompt: Prompt, reason: str, detail: str | None = None) -> None:
        self.stat_update(f"failed_{reason.split(',')[0]}")
        failure = {"prompt": prompt.ref, "reason": reason}
        if detail:
            failure["detail"] = detail[:500]
        doc.metadata["rephrase_failures"].append(failure)

    def _sampling(self, prompt: Prompt, attempt: int):
        from rephrase.llm.engine import Sampling

        s, base = prompt.spec.sampling, self.sampling
        temperature = s.temperature if s.temperature is not None else base.temperature
        return Sampling(
            temperature=min(2.0, temperature + base.resample_temperature_step * (attempt - 1)),
            top_p=s.top_p if s.top_p is not None else base.top_p,
            max_tokens=s.max_tokens if s.max_tokens is not None else base.max_tokens,
            seed=self.seed + attempt - 1,
        )

    def _rewrite(self, engine, prompt: Prompt, pending: list[tuple[Document, str]], log: GenerationLog) -> None:
        checks = build_validators(self._checks(prompt))
        reasons: dict[str, Counter] = defaultdict(Counter)
        for attempt in range(1, self.sampling.resample_rounds + 2):
            if not pending:
                break
            sampling = self._sampling(prompt, attempt)
            start = time.perf_counter()
            with self.track_time(f"generate_{prompt.spec.name}"):
                outputs = engine.generate([prompt.messages(d.text) for d, _ in pending], self.sampling.n, sampling)
            self.stat_update("generate_seconds", value=round(time.perf_counter() - start, 3))
            retry = []
            for (doc, key), result in zip(pending, outputs, strict=True):
                self.stat_update("requests")
                if result.error:  # not logged: retried when the task runs again
                    self._fail(doc, prompt, "llm_error", result.error)
                    continue
                candidates = result.completions
                self.stat_update("candidates", value=len(candidates))
                self.stat_update("output_tokens", value=sum(c.output_tokens for c in candidates))
                pick = select(doc.text, candidates, checks)
                for reason, count in pick.failures.items():
                    self.stat_update(f"rejected_{reason}", value=count)
                for name in pick.verdicts[0] if pick.verdicts else ():
                    self.stat_update(f"checked_{name}", value=len(candidates))
                reasons[key].update(pick.failures)
                if pick.accepted:
                    chosen = candidates[pick.index]
                    rewrite = {
                        "text": chosen.text.strip(),
                        "prompt": prompt.ref,
                        "prompt_hash": prompt.hash,
                        "model": engine.model_id,
                        "model_revision": engine.model_revision,
                        "sampling": json.dumps({**sampling.__dict__, "n": self.sampling.n}),
                        "candidate_index": pick.index,
                        "attempts": attempt,
                        "output_tokens": chosen.output_tokens,
                        "validators": json.dumps({k: round(v.score, 4) for k, v in pick.verdicts[pick.index].items()}),
                    }
                    log.put(key, {"rewrite": rewrite})
                    self._apply(doc, prompt, {"rewrite": rewrite})
                elif attempt <= self.sampling.resample_rounds:
                    self.stat_update("resampled")
                    retry.append((doc, key))
                else:
                    failure = ",".join(r for r, _ in reasons[key].most_common()) or "no_candidates"
                    log.put(key, {"failure": failure})
                    self._apply(doc, prompt, {"failure": failure})
            log.commit()
            pending = retry
