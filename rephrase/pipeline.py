"""Config -> the run's datatrove stages, in order. Assembly only: every behaviour lives in a step, and
rephrase.executors decides what runs the stages (local processes, Ray, Slurm job arrays).

  curate   (N tasks): read -> extract HTML -> input checks -> language id -> heuristics -> exact dedup
                      -> quality score -> route -> rephrase -> work/docs (one file per task: the run's shards)
           On Slurm, curate stops at route (work/filtered, CPU partition) and `rephrase` (its own task count, GPU
           partition) reads work/filtered: a GPU is never held while pages are read and filtered. It files each
           document under the curate task that routed it, so work/docs has curate's shards whatever the GPU count.
Every stage after curate runs as M tasks (run.finalize_tasks, default run.tasks), each on its share of the shards,
with memory bounded by that share (global decisions are planned from merged counts, then streamed):
  rows     (M):  work/docs -> rows (original + synthetic) -> [exact-dedup hashes by partition] -> work/rows
  exact    (M):  one task per hash partition lists exact duplicates                       (if dedup.exact)
  minhash  (M / bands / 1): datatrove's signature, bucket and cluster stages           (if dedup.minhash)
  semantic (M / 1 / M / M): embed, fit k-means on a sample, assign, compare per cluster group  (if dedup.semantic)
  count    (M):  rows' metadata -> drop listed duplicates -> token histograms per pool (rephrase.plan)
  finalize (M):  work/rows -> drop duplicates -> token mix -> [rebalance] -> [curriculum] -> dataset shards
  ledger   (M):  curate's drops + work/docs + finalize's outcomes -> ledger/<task>.parquet
  finish   (Slurm only, 1 task): ledger check, stats.json, card, push; local and Ray runs do this in-process.
Every filter's exclusion writer is a LedgerWriter, so whatever a step removes is written with its reason.
"""

from __future__ import annotations

from datatrove.pipeline.base import PipelineStep

from filters.classifiers import QualityScorer
from filters.dedup import ExactDedup, ExactDuplicates, ExactFind, ExactHashes
from filters.heuristics import build_heuristic
from filters.html import ExtractHtml
from filters.language import LanguageId
from filters.minhash import NearDuplicates, minhash_stages
from filters.perplexity import PerplexityFilter
from filters.records import RecordCheck
from filters.semantic import SemanticDuplicates, semantic_stages
from rephrase.config import Config
from rephrase.executors import Stage
from rephrase.finish import FinishRun
from rephrase.inputs import ReadSources, build_readers, resolve_input_path
from rephrase.layout import COUNT, CURATE, EXACT, FINALIZE, FINISH, LEDGER, REPHRASE, ROWS, Layout
from rephrase.ledger import FoldLedger, LedgerWriter
from rephrase.llm.prompts import select_prompts
from rephrase.llm.stage import RephraseStep
from rephrase.mix import Mix
from rephrase.plan import CountPools, PlanSource
from rephrase.prefetch import Prefetch
from rephrase.rebalance import Curriculum, Rebalance
from rephrase.routing import Router
from rephrase.rows import DatasetTap, DatasetWriter, ExplodeRows, HubDatasetWriter, RowsMeta, WorkReader, WorkWriter
from rephrase.stats import plan_source


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
        path = resolve_input_path(cfg, source.path)
        readers += build_readers(source, path, source.limit, layout.inputs, max_doc_bytes=cfg.input.max_doc_bytes)
    calibration = str(layout.calibration_file) if cfg.quality.scale == "percentile" else None
    return [ReadSources(readers)] + [step for _, step in filter_steps(cfg, str(layout.curate_ledger), calibration)]


def rephrase_step(cfg: Config, layout: Layout, source: ReadSources | None = None) -> RephraseStep:
    """`source`: the reader ahead of the stage in its pipeline (its progress through the input gives the ETA)."""
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
        checkpoint_dir=str(layout.llm_checkpoints),
        server_log=str(layout.logs / "vllm-server.log"),
        progress_interval_s=cfg.run.progress_interval_s,
        source=source,
    )


def split_llm_stage(cfg: Config) -> bool:
    return cfg.run.executor == "slurm"


def llm_stage_name(cfg: Config) -> str:
    """The stage whose tasks write work/docs and hold the LLM checkpoints."""
    return REPHRASE if split_llm_stage(cfg) else CURATE


def curate_stages(cfg: Config, layout: Layout) -> list[Stage]:
    if split_llm_stage(cfg):
        filtered = str(layout.filtered)
        return [
            Stage(CURATE, [*read_steps(cfg, layout), WorkWriter(filtered)], cfg.run.tasks),
            Stage(
                REPHRASE,
                [
                    WorkReader(filtered),
                    rephrase_step(cfg, layout),
                    # filed under the curate task that routed it: as many shards for the stages after curate
                    # as curate had tasks, not as there are GPUs (each filtered file is read by one LLM task)
                    WorkWriter(str(layout.docs), by_shard=True),
                ],
                cfg.run.slurm.llm_tasks or cfg.run.tasks,
                gpu=True,
            ),
        ]
    steps = read_steps(cfg, layout)
    if any(rule.prompts for rule in cfg.routing.rules):  # without an LLM stage there is nothing to overlap with
        steps.append(Prefetch(cfg.rephrase.prefetch_docs))
    steps += [rephrase_step(cfg, layout, source=steps[0]), WorkWriter(str(layout.docs))]
    return [Stage(CURATE, steps, cfg.run.tasks, gpu=True)]


def post_tasks(cfg: Config) -> int:
    return cfg.run.finalize_tasks or cfg.run.tasks


def rows_reader(layout: Layout) -> WorkReader:
    return WorkReader(str(layout.rows))


def dedup_filters(cfg: Config, layout: Layout, upto: str, ledger: bool = False) -> list[PipelineStep]:
    """Fresh filters dropping what the dedup stages before `upto` listed (exact, then near, then semantic), writing
    each drop to the finalize ledger when `ledger` is set (only the finalize stage does: the others only look)."""

    def writer(stage: str) -> LedgerWriter | None:
        return LedgerWriter(str(layout.final_ledger), stage, by_shard=True) if ledger else None

    steps: list[PipelineStep] = []
    if cfg.dedup.exact and upto != "exact":
        steps.append(ExactDuplicates(str(layout.exact / "dups"), writer("dedup")))
    if cfg.dedup.minhash.enabled and upto not in ("exact", "minhash"):
        steps.append(NearDuplicates(str(layout.minhash / "twins"), writer("near_dedup")))
    if cfg.dedup.semantic is not None and upto not in ("exact", "minhash", "semantic"):
        steps.append(SemanticDuplicates(str(layout.semantic / "result"), writer("semantic_dedup")))
    return steps


def rows_steps(cfg: Config, layout: Layout) -> list[PipelineStep]:
    steps: list[PipelineStep] = [
        WorkReader(str(layout.docs)),
        ExplodeRows(),
    ]
    if cfg.dedup.exact:
        steps.append(ExactHashes(str(layout.exact / "hashes"), post_tasks(cfg)))
    steps.append(WorkWriter(str(layout.rows), by_shard=True))
    return steps


def final_steps(cfg: Config, layout: Layout, source: PlanSource) -> list[PipelineStep]:
    def writer(stage: str) -> LedgerWriter:
        return LedgerWriter(str(layout.final_ledger), stage, by_shard=True)

    steps: list[PipelineStep] = [rows_reader(layout), *dedup_filters(cfg, layout, FINALIZE, ledger=True)]
    steps.append(Mix(source, writer("mix")))
    steps += [Rebalance(source, i, writer(f"rebalance_{r.by}")) for i, r in enumerate(cfg.rebalance)]
    if cfg.curriculum is not None:
        steps.append(Curriculum(source))
    out = cfg.output
    steps += [
        DatasetTap(writer("dataset"), str(layout.tallies / "dataset"), out.validation_share, cfg.run.seed),
        dataset_writer(cfg, layout),
    ]
    return steps


def dataset_writer(cfg: Config, layout: Layout) -> DatasetWriter | HubDatasetWriter:
    out, push, curriculum = cfg.output, cfg.output.push, cfg.curriculum is not None
    if push is not None and push.stream:
        return HubDatasetWriter(
            str(layout.dataset),
            push.repo_id,
            push.private,
            push.revision,
            out.shard_max_bytes,
            out.validation_share,
            cfg.run.seed,
            curriculum,
        )
    return DatasetWriter(str(layout.dataset_data), out.shard_max_bytes, out.validation_share, cfg.run.seed, curriculum)


def post_curate_stages(cfg: Config, layout: Layout) -> list[Stage]:
    """Every stage after curate, each as post_tasks(cfg) tasks except MinHash's buckets (one task per band) and
    the single-task MinHash clustering and semantic k-means fit."""
    tasks = post_tasks(cfg)
    stages = [Stage(ROWS, rows_steps(cfg, layout), tasks)]
    if cfg.dedup.exact:
        stages.append(Stage(EXACT, [ExactFind(str(layout.exact))], tasks))
    if cfg.dedup.minhash.enabled:
        rows = [rows_reader(layout), *dedup_filters(cfg, layout, "minhash")]
        for m in minhash_stages(cfg.dedup.minhash, rows, str(layout.minhash), tasks):
            stages.append(Stage(f"minhash/{m.name}", m.steps, m.tasks))
    if cfg.dedup.semantic is not None:
        rows = [rows_reader(layout), *dedup_filters(cfg, layout, "semantic")]
        for m in semantic_stages(cfg.dedup.semantic, rows, str(layout.semantic), tasks, cfg.run.seed):
            stages.append(Stage(f"semantic/{m.name}", m.steps, m.tasks))
    source = plan_source(cfg, layout)
    stages += [
        Stage(COUNT, [RowsMeta(str(layout.rows)), *dedup_filters(cfg, layout, COUNT), CountPools(source)], tasks),
        Stage(FINALIZE, final_steps(cfg, layout, source), tasks),
        Stage(LEDGER, [FoldLedger(str(layout.work), str(layout.ledger), str(layout.tallies / "ledger"))], tasks),
    ]
    if cfg.run.executor == "slurm":
        stages.append(Stage(FINISH, [FinishRun(cfg, layout)]))
    return stages


def build_stages(cfg: Config, layout: Layout) -> list[Stage]:
    """Every stage of a run in order."""
    return [*curate_stages(cfg, layout), *post_curate_stages(cfg, layout)]
