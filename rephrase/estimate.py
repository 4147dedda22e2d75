"""`rephrase estimate CONFIG --sample N`: what a full run would cost, predicted from a sample before paying for it.

The first N records of each source go through the config's own CPU steps (readers, HTML extraction, record
checks, language id, heuristics, exact dedup, quality scoring, routing), so the shares that pass and that are
routed to rephrasing are the ones the run will see, not guesses. Documents routed to rephrasing are chunked and
rendered with the real prompts and counted with the model's own tokenizer. Output tokens per request depend on the
model, the prompts and the validators (a rejected candidate is resampled), so they are measured, not assumed: by
rewriting `--measure` of the routed sample documents with the configured engine and validators (the LLM stage
itself), or from a finished run's stats (`--from-run`); only `--measure 0` falls back to assuming output ~= input
with exactly n candidates per request. The sample's figures are scaled per source by the source's total record
count, which is counted cheaply (lines of JSONL, parquet metadata, response records of WARC).
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.data import Document

from rephrase.calibrate import ensure_calibration
from rephrase.config import Config, SourceConfig
from rephrase.layout import Layout
from rephrase.pipeline import filter_steps, rephrase_step
from rephrase.stats import llm_summary

# Output tokens per second of one device, for the hours column when --tokens-per-s is not given: the CPU figure for
# the bundled 135M model (the only one that runs on CPU in useful time), the GPU figure for any other model. The GPU
# figure was not measured in this repository: pass --tokens-per-s measured on your own hardware instead.
THROUGHPUT = {
    "cpu": (100.0, "CPU: vLLM CPU build, SmolLM2-135M fp32, 2 cores, measured for the README"),
    "gpu": (9_000.0, "one H100: SmolLM2-1.7B bf16 with configs/gpu.yaml batching (planning figure)"),
}


@dataclass
class SourceEstimate:
    """One input source: counts over its sample, and its total record count that the sample is scaled to."""

    path: str
    files: int
    records: int
    sampled: int = 0
    passed: int = 0
    to_rephrase: int = 0
    drops: Counter = field(default_factory=Counter)
    too_long: int = 0
    source_tokens: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    output_tokens: float = 0.0
    chunks: list[tuple[int, int]] = field(default_factory=list, repr=False)  # (source tokens, max_tokens) per request

    @property
    def scale(self) -> float:
        return self.records / self.sampled if self.sampled else 0.0


@dataclass
class Estimate:
    """Per-source samples plus the assumptions the totals rest on, each with where it came from (`*_basis`)."""

    sources: list[SourceEstimate]
    model: str
    n: int
    length_ratio: float
    candidates_per_request: float
    output_basis: str
    tokens_per_s: float
    tokens_per_s_basis: str
    device: str
    seconds_counting: float

    def total(self, name: str) -> float:
        """A per-source sample figure scaled to every record of every source."""
        return sum(getattr(s, name) * s.scale for s in self.sources)

    @property
    def hours(self) -> float:
        return self.total("output_tokens") / self.tokens_per_s / 3600


def count_records(path: str, fmt: str) -> int:
    """Records in one file as the readers count them, without parsing them (rephrase.readers.count_records)."""
    import fsspec

    from rephrase.readers import count_records as count_open

    with fsspec.open(path, "rb", compression=None if fmt == "parquet" else "infer") as f:
        return count_open(f, fmt)


def _tally(docs: Iterator[Document], seen: Counter, stage: str) -> Iterator[Document]:
    for doc in docs:
        seen[(doc.metadata["_source"], stage)] += 1
        yield doc


def sample_records(cfg: Config, sources: list[SourceConfig], n: int, work: Path) -> Iterator[Document]:
    """The first n records of each source, read by the pipeline's own (accounting) readers, tagged by source."""
    from rephrase.inputs import build_readers, resolve_input_path

    for i, source in enumerate(sources):
        limit = n if source.limit < 0 else min(n, source.limit)
        path = resolve_input_path(cfg, source.path)
        readers = build_readers(source, path, limit, work, max_doc_bytes=cfg.input.max_doc_bytes)
        for doc in itertools.islice(itertools.chain.from_iterable(r.run(None, 0, 1) for r in readers), limit):
            doc.metadata["_source"] = i
            yield doc


def _output_model(llm: dict, basis: str) -> tuple[float, float, str]:
    """(output tokens per source token, candidates per request, where these come from) from stats.json's `llm`
    section: output tokens per candidate over source tokens per first request, resampled candidates included."""
    first_requests = llm["requests"] - llm.get("resampled", 0)
    if not first_requests or not llm["candidates_generated"] or not llm["tokens_in"]:
        raise ValueError(f"{basis}: nothing was generated; give a run (or a sample) that rephrased documents")
    per_candidate = llm["tokens_out"] / llm["candidates_generated"]
    ratio = per_candidate / (llm["tokens_in"] / first_requests)
    per_request = llm["candidates_generated"] / first_requests
    return ratio, per_request, f"{basis}: {ratio:.2f} output/source tokens, {per_request:.2f} cand./request"


def from_previous_run(run: Path) -> tuple[float, float, str]:
    return _output_model(json.loads((Path(run) / "stats.json").read_text())["llm"], f"from {run}")


def measure_layout(work: Path) -> Layout:
    """Where the measurement's LLM stage keeps its checkpoints and progress file (the status line reads it)."""
    return Layout(work / "measure")


def measured_on(cfg: Config, docs: list[Document], work: Path) -> tuple[float, float, str]:
    """Rewrite `docs` with the LLM stage as the run builds it (engine, prompts, sampling, validators, resampling)
    and read the output model off its counters, exactly as stats.json would report them."""
    step = rephrase_step(cfg, measure_layout(work))
    for _ in step.run(docs, rank=0, world_size=1):  # a list: the status line shows documents of how many
        pass
    counters = {name: stat.total for name, stat in step.stats.stats.items()}
    engine = f"{cfg.rephrase.llm.engine} {cfg.rephrase.llm.model}"
    return _output_model(llm_summary(cfg, counters), f"measured on {len(docs)} documents with {engine}")


def spread(docs: list[Document], k: int) -> list[Document]:
    """k documents spaced evenly through the sample, so every source (they come one after another) is measured."""
    if len(docs) <= k:
        return docs
    return [docs[i * len(docs) // k] for i in range(k)]


class _LLMWork:
    """What the LLM stage would get for one routed document: requests, prompt tokens and source tokens per request,
    with the stage's own chunking, prompts (chat template applied) and per-prompt max_tokens."""

    def __init__(self, cfg: Config) -> None:
        from transformers import AutoTokenizer

        from rephrase.llm.prompts import select_prompts
        from rephrase.models import resolve_model

        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.rephrase.llm.model))
        names = {p for rule in cfg.routing.rules for p in rule.prompts}
        self.prompts = select_prompts(cfg.resolve(cfg.rephrase.prompts_dir), names)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def add(self, est: SourceEstimate, doc: Document) -> None:
        from rephrase.llm.chunking import split_document

        rephrase = self.cfg.rephrase
        n_tokens = self.count(doc.text)
        if n_tokens > rephrase.max_doc_tokens:  # the stage records these as too_long and keeps the original
            est.too_long += 1
            return
        est.source_tokens += n_tokens * len(doc.metadata["prompts"])
        chunks = split_document(doc.text, self.tokenizer, rephrase.chunk_tokens, doc.metadata.get("language", "en"))
        for name in doc.metadata["prompts"]:
            prompt = self.prompts[name]
            cap = prompt.spec.sampling.max_tokens or rephrase.sampling.max_tokens
            for chunk in chunks:
                messages = prompt.messages(chunk)
                rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                est.requests += 1
                est.prompt_tokens += self.count(rendered)
                est.chunks.append((self.count(chunk), cap))


def expected_output(est: SourceEstimate, ratio: float, per_request: float) -> float:
    """Output tokens of the source's sampled requests: each chunk's tokens times the ratio, capped by max_tokens,
    times the candidates per request."""
    return sum(min(ratio * tokens, cap) for tokens, cap in est.chunks) * per_request


def estimate(
    cfg: Config,
    sample: int,
    tokens_per_s: float | None = None,
    from_run: Path | None = None,
    measure: int = 0,
    folder: Path | None = None,
) -> Estimate:
    """Count every input record, run the sample through the config's CPU steps, and count the LLM work of the
    documents routed to rephrasing. Output tokens per request come from `from_run` (a finished run's output
    folder), else from rewriting `measure` routed sample documents with the configured engine, else are assumed.
    `folder` holds the sample's files and the measurement's (a temporary folder when None)."""
    from rephrase.inputs import detect_format, expand_source, resolve_input_path
    from rephrase.models import BUNDLED_REF

    if sample < 1:
        raise ValueError(f"--sample {sample}: need at least 1 record per source")
    if measure < 0:
        raise ValueError(f"--measure {measure}: give a number of documents to rewrite, or 0 to assume")
    if tokens_per_s is not None and tokens_per_s <= 0:
        raise ValueError(f"--tokens-per-s {tokens_per_s}: must be > 0 output tokens per second")
    start = time.perf_counter()
    sources = []
    for source in cfg.input.sources:
        files = expand_source(resolve_input_path(cfg, source.path))
        records = sum(count_records(f, detect_format(f) if source.format == "auto" else source.format) for f in files)
        if source.limit >= 0:  # a limit applies per datatrove task
            records = min(records, source.limit * cfg.run.tasks)
        sources.append(SourceEstimate(source.path, len(files), records))
    counting = time.perf_counter() - start

    work = _LLMWork(cfg)
    seen: Counter = Counter()
    routed: list[Document] = []
    with tempfile.TemporaryDirectory(prefix="rephrase-estimate-") as scratch:
        tmp = folder or Path(scratch)
        steps = filter_steps(cfg, None, ensure_calibration(cfg, tmp / "quality_calibration.json"))
        stream = _tally(sample_records(cfg, cfg.input.sources, sample, tmp), seen, "read")
        for stage, step in steps:
            stream = _tally(step(stream), seen, stage)
        for doc in stream:
            est = sources[doc.metadata["_source"]]
            est.passed += 1
            if doc.metadata.get("action") == "rephrase":
                est.to_rephrase += 1
                work.add(est, doc)
                routed.append(doc)
        n = cfg.rephrase.sampling.n
        if from_run is not None:
            ratio, per_request, basis = from_previous_run(from_run)
        elif measure and routed:
            ratio, per_request, basis = measured_on(cfg, spread(routed, measure), tmp)
        else:
            why = "--measure 0" if routed else "no sampled document is routed to rephrasing"
            ratio, per_request, basis = 1.0, float(n), f"assumed ({why}): output ~= input, {n} candidates/request"
    for i, est in enumerate(sources):
        est.output_tokens = expected_output(est, ratio, per_request)
        est.sampled = before = seen[(i, "read")]
        for stage, _ in steps:
            est.drops[stage] += before - seen[(i, stage)]
            before = seen[(i, stage)]
        est.drops = +est.drops  # only stages that dropped something

    device = "cpu" if cfg.rephrase.llm.model == BUNDLED_REF else "gpu"
    rate, rate_basis = (tokens_per_s, "given with --tokens-per-s") if tokens_per_s else THROUGHPUT[device]
    return Estimate(sources, cfg.rephrase.llm.model, n, ratio, per_request, basis, rate, rate_basis, device, counting)


def format_estimate(est: Estimate) -> str:
    """The sample per source, then the totals scaled to every record, as the tables `rephrase estimate` prints."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    per_source = Table(
        title=f"Sample: first {max(s.sampled for s in est.sources)} records per source", title_justify="left"
    )
    for col in ("source", "files", "records", "sampled", "pass filters", "to rephrase", "dropped in sample"):
        per_source.add_column(col, justify="left" if col in ("source", "dropped in sample") else "right", no_wrap=True)
    for s in est.sources:
        share = [f"{100 * k / s.sampled:.1f}%" if s.sampled else "-" for k in (s.passed, s.to_rephrase)]
        drops = ", ".join(f"{stage} {n}" for stage, n in s.drops.most_common()) or "none"
        path = s.path if len(s.path) <= 40 else "…" + s.path[-39:]  # the file name end is what tells sources apart
        # paths and reasons are data: a file named `[x].jsonl` is not markup
        per_source.add_row(escape(path), str(s.files), f"{s.records:,}", str(s.sampled), *share, escape(drops))

    total = Table(title="Full input (sample scaled per source)", title_justify="left", show_header=False)
    total.add_column(justify="left")
    total.add_column(justify="right")
    total.add_column(justify="left", style="dim")
    records = sum(s.records for s in est.sources)
    rows = [
        (
            "input records",
            f"{records:,}",
            f"counted in {sum(s.files for s in est.sources)} files ({est.seconds_counting:.1f} s)",
        ),
        ("pass filters", f"{est.total('passed'):,.0f}", ""),
        (
            "routed to rephrase",
            f"{est.total('to_rephrase'):,.0f}",
            f"{est.total('too_long'):,.0f} of them over max_doc_tokens",
        ),
        ("LLM requests", f"{est.total('requests'):,.0f}", "one per chunk per prompt"),
        ("prompt tokens in", f"{est.total('prompt_tokens'):,.0f}", f"chat template included; {est.model} tokenizer"),
        ("expected output tokens", f"{est.total('output_tokens'):,.0f}", f"{est.output_basis}; max_tokens caps each"),
        ("throughput", f"{est.tokens_per_s:,.0f} out tok/s", est.tokens_per_s_basis),
        (
            f"{est.device.upper()}-hours",
            f"{est.hours:,.2f}",
            f"= {est.hours * 60:,.1f} min; output-bound: prefill and CPU filtering not counted",
        ),
    ]
    for row in rows:
        total.add_row(*row)
    console = Console(width=160, highlight=False)
    with console.capture() as captured:
        console.print(per_source)
        console.print(total)
    return captured.get()
