"""Config -> datatrove steps and executors. Assembly only: every behaviour lives in a step.

Two datatrove stages run one after the other:
  curate   (N tasks): read -> extract HTML -> input checks -> language id -> heuristics -> exact dedup
                      -> quality score -> route -> rephrase -> work/docs
  finalize (1 task):  work/docs -> rows (original + synthetic) -> exact dedup -> mix -> dataset
Every filter's exclusion writer is a LedgerWriter, so whatever a step removes is written with its reason.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import ParquetReader

from filters.classifiers import QualityScorer
from filters.dedup import ExactDedup
from filters.heuristics import build_heuristic
from filters.html import ExtractHtml
from filters.language import LanguageId
from filters.records import RecordCheck
from rephrase.config import Config
from rephrase.inputs import ReadSources, build_readers
from rephrase.ledger import LedgerWriter
from rephrase.llm.prompts import select_prompts
from rephrase.llm.stage import RephraseStep
from rephrase.mix import Mix
from rephrase.routing import Router
from rephrase.rows import DatasetWriter, ExplodeRows, Tap, WorkWriter, work_adapter


@dataclass(frozen=True)
class Layout:
    """Where a run writes. dataset/, ledger/ and stats.json are the output contract; work/ and logs/ are not."""

    out: Path

    @property
    def work(self) -> Path:
        return self.out / "work"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def dataset(self) -> Path:
        return self.out / "dataset"

    @property
    def ledger_file(self) -> Path:
        return self.out / "ledger" / "ledger.parquet"

    @property
    def stats_file(self) -> Path:
        return self.out / "stats.json"


def resolve_input_path(cfg: Config, path: str) -> str:
    if path.startswith("bundled:sample/"):
        from rephrase.sample_data import ensure_sample

        return str(ensure_sample() / path.removeprefix("bundled:sample/"))
    return cfg.resolve(path)


def curate_steps(cfg: Config, layout: Layout) -> list[PipelineStep]:
    ledger = str(layout.work / "ledger" / "curate")
    readers = []
    for source in cfg.input.sources:
        readers += build_readers(source, resolve_input_path(cfg, source.path), source.limit, layout.work / "inputs")
    steps: list[PipelineStep] = [ReadSources(readers)]
    if cfg.input.extract_html:
        steps.append(ExtractHtml(timeout=cfg.input.extract_timeout_s))
    steps.append(RecordCheck(cfg.input.max_doc_bytes, exclusion_writer=LedgerWriter(ledger, "input")))
    if cfg.language.enabled:
        steps.append(LanguageId(cfg.language.languages, cfg.language.threshold, LedgerWriter(ledger, "language")))
    for h in cfg.heuristics:
        steps.append(build_heuristic(h.use, h.params, exclusion_writer=LedgerWriter(ledger, h.use)))
    if cfg.dedup.exact:
        # before the LLM: a copy of a document is never rewritten twice (within a task; finalize catches the rest)
        steps.append(ExactDedup(exclusion_writer=LedgerWriter(ledger, "dedup")))
    steps.append(QualityScorer(cfg.quality.classifiers, cfg.quality.buckets))
    steps.append(Router(cfg.routing.rules, exclusion_writer=LedgerWriter(ledger, "route")))
    prompt_names = {p for rule in cfg.routing.rules for p in rule.prompts}
    steps.append(
        RephraseStep(
            cfg.rephrase.llm,
            cfg.rephrase.sampling,
            select_prompts(cfg.resolve(cfg.rephrase.prompts_dir), prompt_names),
            cfg.rephrase.validators,
            batch_size=cfg.rephrase.batch_size,
            chunk_tokens=cfg.rephrase.chunk_tokens,
            max_doc_tokens=cfg.rephrase.max_doc_tokens,
            seed=cfg.run.seed,
            checkpoint_dir=str(layout.work / "llm_checkpoints"),
            server_log=str(layout.logs / "vllm-server.log"),
        )
    )
    steps.append(WorkWriter(str(layout.work / "docs")))
    return steps


def finalize_steps(cfg: Config, layout: Layout) -> list[PipelineStep]:
    ledger = str(layout.work / "ledger" / "finalize")
    steps: list[PipelineStep] = [
        ParquetReader(str(layout.work / "docs"), adapter=work_adapter, glob_pattern="*.parquet"),
        ExplodeRows(),
    ]
    if cfg.dedup.exact:
        steps.append(ExactDedup(exclusion_writer=LedgerWriter(ledger, "dedup")))
    steps += [
        Mix(cfg.mix.synthetic_share, cfg.mix.max_upsample, cfg.run.seed, LedgerWriter(ledger, "mix")),
        Tap(LedgerWriter(ledger, "dataset")),
        DatasetWriter(str(layout.dataset / "data"), cfg.output.shard_max_bytes),
    ]
    return steps


def build_executors(cfg: Config, layout: Layout) -> tuple[LocalPipelineExecutor, LocalPipelineExecutor]:
    curate = LocalPipelineExecutor(
        curate_steps(cfg, layout),
        tasks=cfg.run.tasks,
        workers=min(cfg.run.workers, cfg.run.tasks),
        logging_dir=str(layout.logs / "curate"),
    )
    finalize = LocalPipelineExecutor(
        finalize_steps(cfg, layout), tasks=1, workers=1, logging_dir=str(layout.logs / "finalize"), depends=curate
    )
    return curate, finalize


def reset_finalize(layout: Layout) -> None:
    """finalize is cheap and global: it always reruns on the complete curate output, never on a partial one."""
    for path in (layout.logs / "finalize", layout.work / "ledger" / "finalize", layout.dataset / "data"):
        shutil.rmtree(path, ignore_errors=True)
