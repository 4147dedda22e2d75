"""Config -> the run's datatrove stages, in order. Assembly only: every behaviour lives in a step, and
rephrase.executors decides what runs the stages (local processes, Ray, Slurm).

  curate   (N tasks): read -> extract HTML -> input checks -> language id -> heuristics -> exact dedup
                      -> quality score -> route -> rephrase -> work/docs
           On Slurm, curate stops at route (work/filtered, CPU partition) and `rephrase` (its own task count, GPU
           partition) reads work/filtered: a GPU is never held while pages are read and filtered.
  rows     (1 task):   work/docs -> rows (original + synthetic) -> exact dedup -> work/rows
  minhash  (datatrove's signature / bucket / cluster stages over work/rows, if enabled)
  finalize (1 task):   work/rows -> near-dedup -> [semantic dedup] -> token mix -> [rebalance] -> [curriculum]
                       -> dataset
  finish   (Slurm only, 1 task): ledger, stats.json, card, push; local and Ray runs do this in-process.
Every filter's exclusion writer is a LedgerWriter, so whatever a step removes is written with its reason.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import ParquetReader

from filters.classifiers import QualityScorer
from filters.dedup import ExactDedup
from filters.heuristics import build_heuristic
from filters.html import ExtractHtml
from filters.language import LanguageId
from filters.minhash import NearDedupFilter, minhash_stages
from filters.perplexity import PerplexityFilter
from filters.records import RecordCheck
from filters.semantic import SemanticDedup
from rephrase.config import Config
from rephrase.executors import Stage
from rephrase.inputs import ReadSources, build_readers
from rephrase.ledger import LedgerWriter
from rephrase.llm.prompts import select_prompts
from rephrase.llm.stage import RephraseStep
from rephrase.mix import Mix
from rephrase.prefetch import Prefetch
from rephrase.rebalance import Curriculum, Rebalance
from rephrase.routing import Router
from rephrase.rows import DatasetWriter, ExplodeRows, HubDatasetWriter, Tap, WorkWriter, work_adapter


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


def read_steps(cfg: Config, layout: Layout) -> list[PipelineStep]:
    """Reading and every filter up to routing: the CPU half of curate."""
    readers = []
    for source in cfg.input.sources:
        readers += build_readers(source, resolve_input_path(cfg, source.path), source.limit, layout.work / "inputs")
    calibration = str(layout.calibration_file) if cfg.quality.scale == "percentile" else None
    return [ReadSources(readers)] + [
        step for _, step in filter_steps(cfg, str(layout.work / "ledger" / "curate"), calibration)
    ]


def rephrase_step(cfg: Config, layout: Layout) -> RephraseStep:
    prompt_names = {p for rule in cfg.routing.rules for p in rule.prompts}
    return RephraseStep(
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


def split_llm_stage(cfg: Config) -> bool:
    return cfg.run.executor == "slurm"


def llm_stage_name(cfg: Config) -> str:
    """The stage whose tasks write work/docs and hold the LLM checkpoints."""
    return "rephrase" if split_llm_stage(cfg) else "curate"


def curate_stages(cfg: Config, layout: Layout) -> list[Stage]:
    if split_llm_stage(cfg):
        filtered = str(layout.work / "filtered")
        return [
            Stage("curate", [*read_steps(cfg, layout), WorkWriter(filtered)], cfg.run.tasks),
            Stage(
                "rephrase",
                [
                    ParquetReader(filtered, adapter=work_adapter, glob_pattern="*.parquet"),
                    rephrase_step(cfg, layout),
                    WorkWriter(str(layout.work / "docs")),
                ],
                cfg.run.slurm.llm_tasks or cfg.run.tasks,
                gpu=True,
            ),
        ]
    steps = read_steps(cfg, layout)
    if any(rule.prompts for rule in cfg.routing.rules):  # without an LLM stage there is nothing to overlap with
        steps.append(Prefetch(cfg.rephrase.prefetch_docs))
    steps += [rephrase_step(cfg, layout), WorkWriter(str(layout.work / "docs"))]
    return [Stage("curate", steps, cfg.run.tasks, gpu=True)]


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
        dataset_writer(cfg, layout),
    ]
    return steps


def dataset_writer(cfg: Config, layout: Layout) -> DatasetWriter | HubDatasetWriter:
    out, push = cfg.output, cfg.output.push
    if push is not None and push.stream:
        return HubDatasetWriter(
            str(layout.dataset),
            push.repo_id,
            push.private,
            push.revision,
            out.shard_max_bytes,
            out.validation_share,
            cfg.run.seed,
        )
    return DatasetWriter(str(layout.dataset / "data"), out.shard_max_bytes, out.validation_share, cfg.run.seed)


def build_stages(cfg: Config, layout: Layout) -> list[Stage]:
    """Every stage of a run in order. The stages after curate are global (dedup and mix need every row), so they
    run as single tasks except MinHash's bucket stage, one task per band."""
    stages = [*curate_stages(cfg, layout), Stage("rows", rows_steps(cfg, layout))]
    if cfg.dedup.minhash.enabled:
        reader = ParquetReader(str(layout.work / "rows"), adapter=work_adapter, glob_pattern="*.parquet")
        for m in minhash_stages(cfg.dedup.minhash, reader, str(layout.work / "minhash"), tasks=1):
            stages.append(Stage(f"minhash/{m.name}", m.steps, m.tasks))
    stages.append(Stage("finalize", final_steps(cfg, layout)))
    if cfg.run.executor == "slurm":
        stages.append(Stage("finish", [FinishRun(cfg)]))
    return stages


class FinishRun(PipelineStep):
    """The end of a run as a job of its own (Slurm): ledger, stats.json, card and push, after finalize."""

    name, type = "finish", "📋 - FINISH"

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from rephrase.run import finish_run

        finish_run(self.cfg, Layout(Path(self.cfg.resolve(self.cfg.run.output))), {})
        yield from ()


def reset_finalize(layout: Layout) -> None:
    """The stages after curate are cheap and global: they always rerun on the complete curate output."""
    work, logs = layout.work, layout.logs
    for path in (
        logs / "rows",
        logs / "minhash",
        logs / "finalize",
        logs / "finish",
        work / "rows",
        work / "minhash",
        work / "ledger" / "finalize",
        layout.dataset / "data",
    ):
        shutil.rmtree(path, ignore_errors=True)
