"""RephraseStep: the LLM stage as a datatrove step. It wires prompts, the engine, validators and selection.

Every document passes through (so the step also counts its tokens for mixing); documents routed to `rephrase`
are submitted to the engine per prompt, a batch at a time, and the n candidates of a document share one prefill.
Documents whose n candidates all fail are resampled up to `resample_rounds` more times at a slightly higher
temperature, submitted the moment their verdicts are in, so they run beside the next batch's first candidates
instead of in a small call of their own: extra candidates are only paid for where the first ones failed, and the
engine's batch stays full. Long documents are split into chunks (rephrase.llm.chunking); each chunk is a job of
its own and the chunk rewrites are joined in order, so a document is rewritten only if every chunk is. Results
are recorded on the document, never dropped here: a rewrite that fails every validator, a document over the hard
length limit, or an engine error becomes a recorded failure that the ledger turns into a reason. Finished
outcomes go to a per-task GenerationLog, so a killed task that reruns does not pay for them again. The engine
generates on its own thread while this one validates (sentence embeddings for `faithful` are the costly part).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sized
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched

from rephrase.config import LLMConfig, SamplingConfig, ValidatorConfig
from rephrase.llm.checkpoint import GenerationLog, outcome_key
from rephrase.llm.chunking import Job, combine, split_document
from rephrase.llm.control import control_strings
from rephrase.llm.engine import Completion, Engine, Generation, Sampling
from rephrase.llm.inflight import InFlight
from rephrase.llm.progress import InputProgress, StageProgress, Totals
from rephrase.llm.prompts import Prompt
from rephrase.llm.selection import select_round
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
        progress_interval_s: float = 60.0,
        *,
        engine: Callable[[], Engine] | None = None,
        source: InputProgress | None = None,
    ) -> None:
        """`engine` builds the task's engine (called once per task, closed when it ends); by default the one `llm`
        names. Tests and benchmarks pass their own here: a scripted engine, or one already loaded. `source` is the
        reader step ahead in the same pipeline, whose progress through the input gives the ETA."""
        super().__init__()
        self.llm, self.sampling, self.prompts = llm, sampling, prompts
        self.validator_configs = validators  # each built once as its config loaded: names and parameters hold
        self.batch_size, self.chunk_tokens, self.max_doc_tokens = batch_size, chunk_tokens, max_doc_tokens
        self.seed, self.checkpoint_dir, self.server_log = seed, checkpoint_dir, server_log
        self.progress_interval_s = progress_interval_s
        self.engine_factory, self.source = engine, source

    def _checks(self, prompt: Prompt) -> list[ValidatorConfig]:
        return [*self.validator_configs, *prompt.spec.validators]

    def _engine(self) -> Engine:
        from rephrase.llm.factory import build_engine
        from rephrase.models import resolve_model

        if self.engine_factory is not None:
            return self.engine_factory()
        return build_engine(
            self.llm.engine,
            resolve_model(self.llm.model),
            engine_args=self.llm.engine_args,
            server_url=self.llm.server_url,
            api_key_env=self.llm.api_key_env,
            request_timeout_s=self.llm.request_timeout_s,
            max_concurrency=self.llm.max_concurrency,
            max_retries=self.llm.max_retries,
            seed=self.seed,
            log_path=self.server_log,
            record_dir=Path(self.checkpoint_dir) / "engines",
        )

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        """Documents are read a batch at a time and leave in input order. Requests go to the engine the moment they
        exist (a batch's first candidates, a failed job's resample) and join its running batch; a new batch is read
        whenever fewer than `batch_size` of this task's requests are still generating, so the engine (the GPU)
        always has work queued while this thread checks and selects what came back."""
        from rephrase.loaded import tokenizer
        from rephrase.models import resolve_model

        self._tokenizer = tokenizer(resolve_model(self.llm.model))
        self._controls = control_strings(self._tokenizer)
        self._built: dict[str, list[Validator]] = {}
        self._engine_obj = None
        self._totals = Totals()
        log = GenerationLog(Path(self.checkpoint_dir) / f"{rank:05d}.jsonl")
        total = len(data) if isinstance(data, Sized) else None
        status = Path(self.checkpoint_dir) / "progress" / f"{rank:05d}.json"  # Layout.llm_progress
        progress = StageProgress(
            rank, total, self.progress_interval_s, self._totals, status_path=status, source=self.source
        )
        inflight: InFlight[_Request] = InFlight()
        batches = batched(data, self.batch_size)
        waiting: deque[_Batch] = deque()  # read and not yet yielded, in input order
        more = True
        try:
            while more or inflight.unjudged:
                while more and len(waiting) < MAX_BATCHES_HELD and inflight.generating < self.batch_size:
                    batch = next(batches, None)
                    if batch is None:
                        more = False
                        break
                    waiting.append(self._start(list(batch), log, inflight))
                    yield from self._flush(waiting, progress)
                if inflight.unjudged:
                    with self.track_time("batch"):
                        self._judge(inflight.take(STALL_S), log, inflight)
                    progress.tick()
                yield from self._flush(waiting, progress)
        finally:
            if self._engine_obj is not None:  # nothing may still use the engine when the task ends
                self._engine_obj.close()
            self.stat_update("generate_seconds", value=round(inflight.busy_seconds, 3))
            progress.close()
            log.close()

    def _start(self, docs: list[Document], log: GenerationLog, inflight: InFlight[_Request]) -> _Batch:
        """Split the batch into jobs per prompt, replay checkpointed ones, submit the first round of the rest."""
        batch = _Batch(docs)
        lengths = self._tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
        for doc, ids in zip(docs, lengths, strict=True):
            self.stat_update("total")
            doc.metadata.update(n_tokens=len(ids), rewrites=[], rephrase_failures=[])
            if doc.metadata.get("action") != "rephrase":
                continue
            if len(ids) > self.max_doc_tokens:
                for name in doc.metadata["prompts"]:
                    self._fail(doc, self.prompts[name], "too_long")
                continue
            chunks = split_document(doc.text, self._tokenizer, self.chunk_tokens, doc.metadata.get("language", "en"))
            sizes = [len(ids)] if len(chunks) == 1 else [len(self._tokenizer(c)["input_ids"]) for c in chunks]
            self.stat_update("chunks", value=len(chunks))
            self.stat_update("n_tokens_in", value=len(ids) * len(doc.metadata["prompts"]))
            self._totals.input_tokens += len(ids) * len(doc.metadata["prompts"])
            for name in doc.metadata["prompts"]:
                parts = enumerate(zip(chunks, sizes, strict=True))
                batch.jobs[name] += [Job(doc, i, len(chunks), chunk, n) for i, (chunk, n) in parts]
        for name, prompt_jobs in batch.jobs.items():
            prompt = self.prompts[name]
            pending = self._replay(log, prompt, prompt_jobs)
            if pending:
                self._engine_obj = self._engine_obj or self._engine()
                batch.open += len(pending)
                self._submit(batch, prompt, pending, 1, [Counter() for _ in pending], inflight)
                if name not in self._built:  # validators load their models once per task, while the engine works
                    self._built[name] = self._load_checks(prompt, pending[0].text)
        return batch

    def _flush(self, waiting: deque[_Batch], progress: StageProgress) -> DocumentsPipeline:
        """Yield the oldest batches whose every job has an outcome."""
        while waiting and not waiting[0].open:
            batch = waiting.popleft()
            for name, prompt_jobs in batch.jobs.items():
                self._assemble(self.prompts[name], prompt_jobs)
            progress.update(len(batch.docs), self._totals)
            yield from batch.docs

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

    def _sampling(self, prompt: Prompt, attempt: int) -> Sampling:
        s, base = prompt.spec.sampling, self.sampling
        temperature = s.temperature if s.temperature is not None else base.temperature
        return Sampling(
            temperature=min(2.0, temperature + base.resample_temperature_step * (attempt - 1)),
            top_p=s.top_p if s.top_p is not None else base.top_p,
            max_tokens=s.max_tokens if s.max_tokens is not None else base.max_tokens,
            seed=self.seed + attempt - 1,
        )

    def _submit(
        self, batch: _Batch, prompt: Prompt, jobs: list[Job], attempt: int, reasons: list[Counter], inflight: InFlight
    ) -> None:
        """One engine submit for jobs at the same attempt. Each candidate is capped by its own input's length (a
        short chunk is not allowed to ramble to max_tokens), in the same call."""
        import dataclasses
        import math

        sampling = self._sampling(prompt, attempt)
        n = self.sampling.n if attempt == 1 else (self.sampling.resample_n or self.sampling.n)
        capped = []
        for job in jobs:
            limit = sampling.max_tokens
            if self.sampling.max_output_ratio is not None:
                wanted = max(64, math.ceil(self.sampling.max_output_ratio * job.tokens))
                limit = min(limit, 2 ** math.ceil(math.log2(wanted)))
            capped.append(dataclasses.replace(sampling, max_tokens=limit))
        futures = self._engine_obj.submit([prompt.messages(job.text, self._controls) for job in jobs], n, capped)
        for job, future, seen in zip(jobs, futures, reasons, strict=True):
            inflight.add(_Request(batch, prompt, job, attempt, n, sampling, seen), future)

    def _load_checks(self, prompt: Prompt, sample: str) -> list[Validator]:
        """Build the prompt's validators and check one sample, so their models (MiniLM, lid.176, a quality
        classifier) load now, while the engine thread generates the first round, not after it returns. On this
        thread: loading them on a helper thread left datatrove's Ray pool workers deaf to SIGTERM (the Ray
        executor test hung at pool shutdown; measured, cause inside torch or transformers not pinned down)."""
        checks = build_validators(self._checks(prompt))
        for check in checks:  # each one directly: select_round would skip the model checks for this copy
            if hasattr(check, "use_controls"):
                check.use_controls(self._controls)
            if hasattr(check, "prepare"):
                check.prepare([sample])
            check(sample, Completion(sample, "stop", 0))
        return checks

    def _judge(self, settled: list[tuple[_Request, Future]], log: GenerationLog, inflight: InFlight[_Request]) -> None:
        """Validate and select what the engine returned (per prompt, in one batch); resample, at once, the jobs
        none of whose candidates passed."""
        by_prompt: dict[str, list[tuple[_Request, Generation]]] = defaultdict(list)
        died = None
        for request, future in settled:
            if future.exception() is not None:  # the engine died: keep what it finished, then stop the task
                died = died or future.exception()
                continue
            by_prompt[request.prompt.spec.name].append((request, future.result()))
        retry: dict[tuple[int, str, int], list[_Request]] = defaultdict(list)
        for name, answered in by_prompt.items():
            pairs = [(r.job.text, g.completions) for r, g in answered]
            for (request, result), pick in zip(answered, select_round(pairs, self._built[name]), strict=True):
                if self._record(request, result, pick, log):
                    retry[id(request.batch), name, request.attempt + 1].append(request)
        log.commit()
        if died is not None:
            raise died
        for (_, _, attempt), requests in retry.items():
            first, jobs, reasons = requests[0], [r.job for r in requests], [r.reasons for r in requests]
            self._submit(first.batch, first.prompt, jobs, attempt, reasons, inflight)

    def _record(self, request: _Request, result: Generation, pick, log: GenerationLog) -> bool:
        """Stats and the job's outcome for one answered request; True when the job is to be resampled."""
        job, prompt, attempt = request.job, request.prompt, request.attempt
        self.stat_update("requests")
        if result.error:  # not logged: retried when the task runs again
            job.outcome = {"failure": "llm_error", "detail": result.error[:500]}
            request.batch.open -= 1
            return False
        candidates = result.completions
        self.stat_update("candidates", value=len(candidates))
        self.stat_update("output_tokens", value=sum(c.output_tokens for c in candidates))
        self._totals.output_tokens += sum(c.output_tokens for c in candidates)
        for reason, count in pick.failures.items():
            self.stat_update(f"rejected_{reason}", value=count)
        for verdicts in pick.verdicts:
            for name, verdict in verdicts.items():
                self.stat_update(f"checked_{name}")
                if not verdict.ok:
                    self.stat_update(f"failed_by_{name}")
        request.reasons.update(pick.failures)
        if pick.accepted:
            chosen = candidates[pick.index]
            job.outcome = {
                "rewrite": {
                    "text": chosen.text.strip(),
                    "prompt": prompt.ref,
                    "prompt_hash": prompt.hash,
                    "model": self._engine_obj.model_id,
                    "model_revision": self._engine_obj.model_revision,
                    "sampling": json.dumps({**request.sampling.__dict__, "n": request.n}),
                    "candidate_index": pick.index,
                    "attempts": attempt,
                    "output_tokens": chosen.output_tokens,
                    "validators": json.dumps({k: round(v.score, 4) for k, v in pick.verdicts[pick.index].items()}),
                }
            }
        elif attempt <= self.sampling.resample_rounds:
            self.stat_update("resampled")
            return True
        else:
            job.outcome = {"failure": ",".join(r for r, _ in request.reasons.most_common()) or "no_candidates"}
        log.put(job.key, job.outcome)
        request.batch.open -= 1
        return False


STALL_S = 1800.0
"""Seconds with requests generating and none coming back before the task fails as hung: far past one request's
generation on a CPU (minutes for a 64-document batch), and only a backstop, since engines settle every request,
a dead engine's too."""
MAX_BATCHES_HELD = 4
"""Batches read and not yet yielded: the engine gets the next batch while an older one waits for its last
resample, and memory stays bounded."""


@dataclass
class _Request:
    """A job's request at one attempt, with the failure reasons of its earlier attempts."""

    batch: _Batch
    prompt: Prompt
    job: Job
    attempt: int
    n: int
    sampling: Sampling
    reasons: Counter


class _Batch:
    """Documents read together, their jobs per prompt, and how many jobs still wait for an outcome."""

    def __init__(self, docs: list[Document]) -> None:
        self.docs = docs
        self.jobs: dict[str, list[Job]] = defaultdict(list)
        self.open = 0


def _bucket(doc: Document) -> str:
    return str(doc.metadata.get("quality_bucket", "none"))
