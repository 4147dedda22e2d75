"""Run a config end to end: check everything that can fail before heavy work, run (or submit) the datatrove
stages, then finish (rephrase.finish: ledger check, stats.json, the dataset card, the push)."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from rephrase.calibrate import ensure_calibration
from rephrase.config import Config, PushConfig
from rephrase.executors import Stage, run_stages, submit_stages
from rephrase.finish import RunResult, finish_run
from rephrase.inputs import ReadSources, busy_tasks
from rephrase.layout import Layout
from rephrase.llm.prompts import select_prompts
from rephrase.pipeline import build_stages, llm_stage_name
from rephrase.resume import restart_curate_if_changed

__all__ = ["PreflightError", "RunResult", "Submitted", "run_config"]


class PreflightError(RuntimeError):
    """Something that would fail later (missing model, unwritable output...) found before any heavy work."""


@dataclass
class Submitted:
    """A Slurm run: the jobs are queued and its last job writes the outputs."""

    layout: Layout
    job_ids: list[str]


def preflight(cfg: Config, layout: Layout) -> None:
    layout.out.mkdir(parents=True, exist_ok=True)
    if not os.access(layout.out, os.W_OK):
        raise PreflightError(f"output folder {layout.out} is not writable; pass --output to a writable folder")
    free = shutil.disk_usage(layout.out).free
    if free < 512 * 2**20:
        raise PreflightError(f"only {free // 2**20} MiB free under {layout.out}; free space or choose --output")
    if cfg.output.push is not None:
        from huggingface_hub import get_token

        if get_token() is None:
            raise PreflightError("output.push needs a Hub token: set HF_TOKEN or run `hf auth login`")
        if cfg.output.push.stream:
            open_stream_target(cfg.output.push)
    needs_llm = any(rule.action == "rephrase" for rule in cfg.routing.rules)
    if needs_llm and cfg.rephrase.llm.server_url is None:
        from rephrase.models import resolve_model

        model = resolve_model(cfg.rephrase.llm.model)
        if "/" in model and Path(model).is_absolute() and not (Path(model) / "config.json").is_file():
            raise PreflightError(f"model folder {model} has no config.json; run `rephrase models fetch` or fix model")


def warn_idle_tasks(cfg: Config, stages: list[Stage]) -> None:
    read = next(step for step in stages[0].steps if isinstance(step, ReadSources))
    busy = busy_tasks(read.readers, cfg.run.tasks)
    if busy < cfg.run.tasks:
        logging.getLogger("rephrase.notice").warning(
            f"the input has at most {busy} file(s) per source for run.tasks={cfg.run.tasks}, so "
            f"only {busy} task(s) get documents (datatrove never splits a file) and every stage after curate has "
            f"{busy} shard(s); split the input into at least {cfg.run.tasks} files to use every task"
        )


def open_stream_target(push: PushConfig) -> None:
    """Streamed shards are committed by every finalize task: the repo and branch must exist before the first."""
    from huggingface_hub import HfApi

    from rephrase.hub import PushError, prepare_repo

    try:
        prepare_repo(HfApi(), push.repo_id, private=push.private, revision=push.revision)
    except PushError as e:
        raise PreflightError(f"output.push.stream: {e}") from e
    except Exception as e:
        raise PreflightError(
            f"output.push.stream: the Hub repo {push.repo_id} cannot be prepared ({type(e).__name__}: {e}); check "
            "the network and token, or set output.push.stream: false to push once the run ends"
        ) from e


def reopen_failed_llm_tasks(layout: Layout, stage: str) -> list[int]:
    """Tasks whose documents hit engine errors (dead server, timeouts) are run again by the next run: their
    finished generations replay from the checkpoint, only the failed requests go to the model again."""
    reopened = []
    for f in sorted(layout.docs.glob("*.parquet")):
        rank = int(f.stem.split("_")[-1])
        done = layout.logs / stage / "completions" / f"{rank:05d}"
        if not done.exists():  # an unfinished task reruns anyway, and a killed one may have left half a file
            continue
        if _mentions(f, '"llm_error"'):
            done.unlink()
            reopened.append(rank)
    return reopened


def _mentions(path: Path, needle: str) -> bool:
    """Whether any document's metadata in a work/docs file holds `needle`, read a row group at a time (this runs
    in the main process before every stage: it must not hold a shard)."""
    with pq.ParquetFile(path) as pf:
        for batch in pf.iter_batches(batch_size=1000, columns=["meta"]):
            if pc.any(pc.match_substring(batch.column("meta"), needle)).as_py():
                return True
    return False


def reset_post_curate(layout: Layout) -> None:
    """The stages after curate rerun on the complete curate output every time: a changed mix, dedup or output
    setting needs no fingerprint, and a kill inside them leaves nothing half-merged behind."""
    for path in layout.post_curate():
        shutil.rmtree(path, ignore_errors=True)


def run_config(cfg: Config) -> RunResult | Submitted:
    layout = Layout(Path(cfg.resolve(cfg.run.output)))
    preflight(cfg, layout)
    prompts = select_prompts(cfg.resolve(cfg.rephrase.prompts_dir), {p for r in cfg.routing.rules for p in r.prompts})
    restart_curate_if_changed(cfg, layout, {name: prompt.hash for name, prompt in prompts.items()})
    stages = build_stages(cfg, layout)
    warn_idle_tasks(cfg, stages)
    if reopened := reopen_failed_llm_tasks(layout, llm_stage_name(cfg)):
        print(f"rephrase: rerunning tasks {reopened}: their documents had engine errors (llm_error) last time")
    ensure_calibration(cfg, layout.calibration_file)
    reset_post_curate(layout)
    if cfg.run.executor == "slurm":
        return Submitted(layout, submit_stages(cfg.run, stages, layout.logs))
    return finish_run(cfg, layout, run_stages(cfg.run, stages, layout.logs))
