"""RephraseStep: the LLM stage as a datatrove step. It wires prompts, the engine, validators and selection.

Every document passes through (so the step also counts its tokens for mixing); documents routed to `rephrase`
get one generation call per prompt, batched across documents so the engine sees large batches and the n
candidates of a document share one prefill. Documents whose n candidates all fail are resampled, alone, up to
`resample_rounds` more times at a slightly higher temperature: extra candidates are only paid for where the first
ones failed. Long documents are split into chunks (rephrase.llm.chunking); each chunk is a job of its own and the
chunk rewrites are joined in order, so a document is rewritten only if every chunk is. Results are recorded on
the document, never dropped here: a rewrite that fails every validator, a document over the hard length limit,
or an engine error becomes a recorded failure that the ledger turns into a reason. Finished outcomes go to a
per-task GenerationLog, so a killed task that reruns does not pay for them again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Sized
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched

from rephrase.config import LLMConfig, SamplingConfig, ValidatorConfig
from rephrase.llm.checkpoint import GenerationLog, outcome_key
from rephrase.llm.chunking import Job, combine, split_document
from rephrase.llm.progress import StageProgress, Totals
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
        chunk_tokens: int,
        max_doc_tokens: int,
        seed: int,
        checkpoint_dir: str,
        server_log: str | None = None,
    ) -> None:
        super().__init__()
        self.llm, self.sampling, self.prompts = llm, sampling, prompts
        self.validator_configs = validators
        for prompt in prompts.values():  # fail at assembly, not inside a worker
            build_validators(self._checks(prompt))
        self.batch_size, self.chunk_tokens, self.max_doc_tokens = batch_size, chunk_tokens, max_doc_tokens
        self.seed, self.checkpoint_dir, self.server_log = seed, checkpoint_dir, server_log

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
        self._built: dict[str, list[Validator]] = {}
        log = GenerationLog(Path(self.checkpoint_dir) / f"{rank:05d}.jsonl")
        engine = None
        self._totals = Totals()
        progress = StageProgress(rank, len(data) if isinstance(data, Sized) else None)
        try:
            for batch in batched(data, self.batch_size):
                jobs: dict[str, list[Job]] = defaultdict(list)
                lengths = tokenizer([d.text for d in batch], add_special_tokens=False)["input_ids"]
                for doc, ids in zip(batch, lengths, strict=True):
                    self.stat_update("total")
                    doc.metadata.update(n_tokens=len(ids), rewrites=[], rephrase_failures=[])
                    if doc.metadata.get("action") != "rephrase":
                        continue
                    if len(ids) > self.max_doc_tokens:
                        for name in doc.metadata["prompts"]:
                            self._fail(doc, self.prompts[name], "too_long")
                        continue
                    chunks = split_document(doc.text, tokenizer, self.chunk_tokens, doc.metadata.get("language", "en"))
                    sizes = [len(ids)] if len(chunks) == 1 else [len(tokenizer(c)["input_ids"]) for c in chunks]
                    self.stat_update("chunks", value=len(chunks))
                    self.stat_update("n_tokens_in", value=len(ids) * len(doc.metadata["prompts"]))
                    for name in doc.metadata["prompts"]:
                        parts = enumerate(zip(chunks, sizes, strict=True))
                        jobs[name] += [Job(doc, i, len(chunks), chunk, n) for i, (chunk, n) in parts]
                for name, prompt_jobs in jobs.items():
                    prompt = self.prompts[name]
                    pending = self._replay(log, prompt, prompt_jobs)
                    if pending:
                        engine = engine or self._engine()
                        self._rewrite(engine, prompt, pending, log)
                    self._assemble(prompt, prompt_jobs)
                self._totals.output_tokens = int(self.stats["output_tokens"].total)
                progress.update(len(batch), self._totals)
                yield from batch
        finally:
            progress.close()
            log.close()
            if engine is not None:
                engine.close()

    def _key(self, job: Job, prompt: Prompt) -> str:
        text_hash = hashlib.sha256(job.text.encode("utf-8")).hexdigest()
        checks = [c.model_dump() for c in self._checks(prompt)]
        record = job.doc.metadata.get("record", job.doc.id)
        return outcome_key(
            record, job.index, text_hash, prompt.ref, prompt.hash, self.llm.model, self.sampling.model_dump(), checks
        )

    def _replay(self, log: GenerationLog, prompt: Prompt, jobs: list[Job]) -> list[Job]:
        """Take outcomes finished by an earlier (killed) run of this task; return the jobs that need the model."""
        pending = []
        for job in jobs:
            job.key = self._key(job, prompt)
            job.outcome = log.get(job.key)
            if job.outcome is None:
                pending.append(job)
            else:
                self.stat_update("replayed_from_checkpoint")
        return pending

    def _assemble(self, prompt: Prompt, jobs: list[Job]) -> None:
        """Per document: the chunk rewrites joined in order, or the first failing chunk's reasons."""
        by_doc: dict[int, list[Job]] = defaultdict(list)
        for job in jobs:
            by_doc[id(job.doc)].append(job)
        for parts in by_doc.values():
            doc = parts[0].doc
            rewrite, failure = combine(parts)
            ok = sum("rewrite" in (job.outcome or {}) for job in parts)
            for outcome, count in (("accepted", ok), ("failed", len(parts) - ok)):  # chunks, as _tally counts docs
                self.stat_update(f"prompt_chunks_{outcome}_{prompt.spec.name}", value=count)
                self.stat_update(f"bucket_chunks_{outcome}_{_bucket(doc)}", value=count)
            if rewrite is None:
                self._fail(doc, prompt, *failure)
            else:
                self.stat_update("accepted")
                self._tally(doc, prompt, "accepted")
                doc.metadata["rewrites"].append(rewrite)

    def _tally(self, doc: Document, prompt: Prompt, outcome: str) -> None:
        """Outcomes per prompt and per quality bucket: which prompts the model cannot follow, and whether low
        buckets (the documents routed to rewriting) fail more often."""
        name, bucket = prompt.spec.name, _bucket(doc)
        self.stat_update(f"prompt_attempted_{name}", f"prompt_{outcome}_{name}")
        self.stat_update(f"bucket_attempted_{bucket}", f"bucket_{outcome}_{bucket}")
        self._totals.attempted += 1
        self._totals.accepted += outcome == "accepted"

    def _fail(self, doc: Document, prompt: Prompt, reason: str, detail: str | None = None) -> None:
        self.stat_update(f"failed_{reason.split(',')[0]}")
        self._tally(doc, prompt, "failed")
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

    def _generate(self, engine, prompt: Prompt, jobs: list[Job], sampling, n: int) -> list:
        """One engine call per output-length bucket: a short chunk is not allowed to ramble to max_tokens."""
        import dataclasses
        import math

        buckets: dict[int, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            limit = sampling.max_tokens
            if self.sampling.max_output_ratio is not None:
                wanted = max(64, math.ceil(self.sampling.max_output_ratio * job.tokens))
                limit = min(limit, 2 ** math.ceil(math.log2(wanted)))
            buckets[limit].append(i)
        outputs: list = [None] * len(jobs)
        for limit, indices in sorted(buckets.items()):
            start = time.perf_counter()
            with self.track_time(f"generate_{prompt.spec.name}"):
                results = engine.generate(
                    [prompt.messages(jobs[i].text) for i in indices],
                    n,
                    dataclasses.replace(sampling, max_tokens=limit),
                )
            self.stat_update("generate_seconds", value=round(time.perf_counter() - start, 3))
            for i, result in zip(indices, results, strict=True):
                outputs[i] = result
        return outputs

    def _rewrite(self, engine, prompt: Prompt, pending: list[Job], log: GenerationLog) -> None:
        if prompt.spec.name not in self._built:  # validators may load models: once per task
            self._built[prompt.spec.name] = build_validators(self._checks(prompt))
        checks = self._built[prompt.spec.name]
        reasons: dict[str, Counter] = defaultdict(Counter)
        for attempt in range(1, self.sampling.resample_rounds + 2):
            if not pending:
                break
            sampling = self._sampling(prompt, attempt)
            n = self.sampling.n if attempt == 1 else (self.sampling.resample_n or self.sampling.n)
            outputs = self._generate(engine, prompt, pending, sampling, n)
            retry = []
            for job, result in zip(pending, outputs, strict=True):
                self.stat_update("requests")
                if result.error:  # not logged: retried when the task runs again
                    job.outcome = {"failure": "llm_error", "detail": result.error[:500]}
                    continue
                candidates = result.completions
                self.stat_update("candidates", value=len(candidates))
                self.stat_update("output_tokens", value=sum(c.output_tokens for c in candidates))
                pick = select(job.text, candidates, checks)
                for reason, count in pick.failures.items():
                    self.stat_update(f"rejected_{reason}", value=count)
                for verdicts in pick.verdicts:
                    for name, verdict in verdicts.items():
                        self.stat_update(f"checked_{name}")
                        if not verdict.ok:
                            self.stat_update(f"failed_by_{name}")
                reasons[job.key].update(pick.failures)
                if pick.accepted:
                    chosen = candidates[pick.index]
                    job.outcome = {
                        "rewrite": {
                            "text": chosen.text.strip(),
                            "prompt": prompt.ref,
                            "prompt_hash": prompt.hash,
                            "model": engine.model_id,
                            "model_revision": engine.model_revision,
                            "sampling": json.dumps({**sampling.__dict__, "n": n}),
                            "candidate_index": pick.index,
                            "attempts": attempt,
                            "output_tokens": chosen.output_tokens,
                            "validators": json.dumps(
                                {k: round(v.score, 4) for k, v in pick.verdicts[pick.index].items()}
                            ),
                        }
                    }
                    log.put(job.key, job.outcome)
                elif attempt <= self.sampling.resample_rounds:
                    self.stat_update("resampled")
                    retry.append(job)
                else:
                    job.outcome = {
                        "failure": ",".join(r for r, _ in reasons[job.key].most_common()) or "no_candidates"
                    }
                    log.put(job.key, job.outcome)
            log.commit()
            pending = retry


def _bucket(doc: Document) -> str:
    return str(doc.metadata.get("quality_bucket", "none"))
