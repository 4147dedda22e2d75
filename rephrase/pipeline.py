"""Config -> datatrove steps and executors. Assembly only: every behaviour lives in a step.

Two datatrove stages run one after the other:
  curate   (N tasks): read -> extract HTML -> input checks -> language id -> heuristics -> exact dedup
                      -> quality score -> route -> rephrase -> work/docs
  rows     (1 task):   work/docs -> rows (original + synthetic) -> exact dedup -> work/rows
  minhash  (datatrove's signature / bucket / cluster stages over work/rows, if enabled)
  finalize (1 task):   work/rows -> near-dedup -> [semantic dedup] -> token mix -> [rebalance] -> [curriculum]
                       -> dataset
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
from filters.minhash import NearDedupFilter, minhash_executors, minhash_stages
from filters.perplexity import PerplexityFilter
from filters.records import RecordCheck
from filters.semantic import SemanticDedup
from rephrase.config import Config
from rephrase.inputs import ReadSources, build_readers
from rephrase.ledger import LedgerWriter
from rephrase.llm.prompts import select_prompts
from rephrase.llm.stage import RephraseStep
from rephrase.mix import Mix
from rephrase.prefetch import Prefetch
from rephrase.rebalance import Curriculum, Rebalance
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
    def calibration_file(self) -> Path:
        return self.work / "quality_calibration.json"

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


def filter_steps(cfg: Config, ledger: str | None, calibration: str | None = None) -> list[tuple[str, PipelineStep]]:
    """The CPU steps of curate between reading and the LLM, named; drops go to the ledger when `ledger` is set
    (`rephrase estimate` runs them on a sample without one). `calibration`: see rephrase.calibrate."""

    def writer(stage: str) -> LedgerWriter | None:
        return LedgerWriter(ledger, stage) if ledger else None

    steps: list[tuple[str, PipelineStep]] = []
    if cfg.input.extract_html:
        steps.append(("extract", ExtractHtml(timeout=cfg.input.extract_timeout_s)))
    steps.append(("input", RecordCheck(cfg.input.max_doc_bytes, exclusion_writer=writer("input"))))
    if cfg.language.enabled:
        steps.append(("language", LanguageId(cfg.language.languages, cfg.language.threshold, writer("language"))))
    for h in cfg.heuristics:
        steps.append((h.use, build_heuristic(h.use, h.params, exclusion_writer=writer(h.use))))
    if cfg.dedup.exact:
        # before the LLM: a copy of a document is never rewritten twice (within a task; finalize catches the rest)
        steps.append(("dedup", ExactDedup(exclusion_writer=writer("dedup"))))
    quality = cfg.quality
    steps.append(("quality", QualityScorer(quality.classifiers, quality.buckets, quality.ensemble, calibration)))
    if cfg.perplexity is not None:
        steps.append(("perplexity", PerplexityFilter(cfg.perplexity, cfg.run.seed, writer("perplexity"))))
    steps.append(("route", Router(cfg.routing.rules, exclusion_writer=writer("route"))))
    return steps


def curate_steps(cfg: Config, layout: Layout) -> list[PipelineStep]:
    readers = []
    for source in cfg.input.sources:
        readers += build_readers(source, resolve_input_path(cfg, source.path), source.limit, layout.work / "inputs")
    steps: list[PipelineStep] = [ReadSources(readers)]
    calibration = str(layout.calibration_file) if cfg.quality.scale == "percentile" else None
    steps += [step for _, step in filter_steps(cfg, str(layout.work / "ledger" / "curate"), calibration)]
    prompt_names = {p for rule in cfg.routing.rules for p in rule.prompts}
    if prompt_names:  # without an LLM stage there is nothing to overlap with
        steps.append(Prefetch(cfg.rephrase.prefetch_docs))
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


def rows_steps(cfg: Config, layout: Layout) -> list[PipelineStep]:
    ledger = str(layout.work / "ledger" / "finalize")
    steps: list[PipelineStep] = [
        ParquetReader(str(layout.work / "docs"), adapter=work_adapter, glob_pattern="*.parquet"),
        ExplodeRows(),
    ]
    if cfg.dedup.exact:
        steps.append(ExactDedup(exclusion_writer=LedgerWriter(ledger, "dedup")))
    steps.append(WorkWriter(str(layout.work / "rows")))
    return steps


def final_steps(cfg: Config, layout: Layout) -> list[PipelineStep]:
    ledger = str(layout.work / "ledger" / "finalize")
    steps: list[PipelineStep] = [
        ParquetReader(str(layout.work / "rows"), adapter=work_adapter, glob_pattern="*.parquet")
    ]
    if cfg.dedup.minhash.enabled:
        steps.append(NearDedupFilter(str(layout.work / "minhash"), LedgerWriter(ledger, "near_dedup")))
    if cfg.dedup.semantic is not None:
        steps.append(SemanticDedup(cfg.dedup.semantic, cfg.run.seed, LedgerWriter(ledger, "semantic_dedup")))
    steps.append(Mix(cfg.mix.synthetic_share, cfg.mix.max_upsample, cfg.run.seed, LedgerWriter(ledger, "mix")))
    steps += [Rebalance(r, cfg.run.seed, LedgerWriter(ledger, f"rebalance_{r.by}")) for r in cfg.rebalance]
    if cfg.curriculum is not None:
        steps.append(Curriculum(cfg.curriculum, cfg.run.seed))
    steps += [
        Tap(LedgerWriter(ledger, "dataset")),
        DatasetWriter(str(layout.dataset / "data"), cfg.output.shard_max_bytes),
    ]
    return steps


def build_executors(cfg: Config, layout: Layout) -> tuple[LocalPipelineExecutor, LocalPipelineExecutor]:
    """(curate, final): running `final` runs its dependency chain rows -> [minhash x3] -> final first.

    The stages after curate are global (dedup and mix need every row), so they run as single tasks except
    MinHash's bucket stage, one task per band.
    """
    logs = layout.logs
    curate = LocalPipelineExecutor(
        curate_steps(cfg, layout),
        tasks=cfg.run.tasks,
        workers=min(cfg.run.workers, cfg.run.tasks),
        logging_dir=str(logs / "curate"),
    )
    previous = LocalPipelineExecutor(
        rows_steps(cfg, layout), tasks=1, workers=1, logging_dir=str(logs / "rows"), depends=curate
    )
    if cfg.dedup.minhash.enabled:
        reader = ParquetReader(str(layout.work / "rows"), adapter=work_adapter, glob_pattern="*.parquet")
        stages = minhash_stages(cfg.dedup.minhash, reader, str(layout.work / "minhash"), tasks=1)
        previous = minhash_executors(stages, str(logs / "minhash"), cfg.run.workers, depends=previous)[-1]
    final = LocalPipelineExecutor(
        final_steps(cfg, layout), tasks=1, workers=1, logging_dir=str(logs / "finalize"), depends=previous
    )
    return curate, final


def reset_finalize(layout: Layout) -> None:
    """The stages after curate are cheap and global: they always rerun on the complete curate output."""
    work, logs = layout.work, layout.logs
    for path in (
        logs / "rows",
        logs / "minhash",
        logs / "finalize",
        work / "rows",
        work / "minhash",
        work / "ledger" / "finalize",
        layout.dataset / "data",
    ):
        shutil.rmtree(path, ignore_errors=True)
