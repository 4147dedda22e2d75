"""Run a config end to end: check everything that can fail before heavy work, run (or submit) the datatrove
stages, then write the ledger, stats.json and the dataset card."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from filters.classifiers import quality_summary
from rephrase.calibrate import ensure_calibration
from rephrase.card import write_card
from rephrase.config import Config, PushConfig
from rephrase.executors import merge_task_stats, run_stages, submit_stages
from rephrase.ledger import build_ledger
from rephrase.llm.prompts import select_prompts
from rephrase.pipeline import Layout, build_stages, llm_stage_name, reset_finalize
from rephrase.resume import restart_curate_if_changed
from rephrase.rows import write_empty_dataset


class PreflightError(RuntimeError):
    """Something that would fail later (missing model, unwritable output...) found before any heavy work."""


@dataclass
class RunResult:
    layout: Layout
    stats: dict
    ledger: list[dict]


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
    for f in sorted((layout.work / "docs").glob("*.parquet")):
        rank = int(f.stem.split("_")[-1])
        done = layout.logs / stage / "completions" / f"{rank:05d}"
        if not done.exists():  # an unfinished task reruns anyway, and a killed one may have left half a file
            continue
        metas = pq.read_table(f, columns=["meta"]).column("meta").to_pylist()
        if any('"llm_error"' in m for m in metas):
            done.unlink()
            reopened.append(rank)
    return reopened


def name_shards(folder: Path) -> None:
    """Hub naming per split: train-00000-of-00003.parquet, validation-00000-of-00001.parquet, in file order."""
    splits: dict[str, list[Path]] = {}
    for f in sorted(folder.glob("*.parquet")):
        splits.setdefault("validation" if "validation-" in f.name else "train", []).append(f)
    for split, files in splits.items():
        for i, f in enumerate(files):
            f.rename(folder / f"{split}-{i:05d}-of-{len(files):05d}.parquet")


def step_stats(logging_dir: Path) -> dict[str, dict]:
    """datatrove's merged stats.json as {step: {counter: total}} plus each step's wall time."""
    path = logging_dir / "stats.json"
    if not path.is_file():
        return {}
    result = {}
    for step in json.loads(path.read_text()):
        name = step["name"].split(" - ", 1)[-1].split(": ", 1)[-1].strip()
        counters = {k: v.get("total", v) if isinstance(v, dict) else v for k, v in step["stats"].items()}
        timing = step["time_stats"]
        counters["wall_time_s"] = round(timing.get("total", 0.0) if isinstance(timing, dict) else timing, 2)
        result[name] = counters
    return result


def read_docs(layout: Layout) -> list[dict]:
    docs = []
    for f in sorted((layout.work / "docs").glob("*.parquet")):
        for row in pq.read_table(f, columns=["id", "meta"]).to_pylist():
            docs.append({"id": row["id"], "meta": json.loads(row["meta"])})
    return docs


def _outcomes(counters: dict, prefix: str) -> dict[str, dict]:
    groups: dict[str, dict] = {}
    for key, value in counters.items():
        for outcome in ("accepted", "failed"):
            if key.startswith(f"{prefix}_{outcome}_"):
                name = key.removeprefix(f"{prefix}_{outcome}_")
                groups.setdefault(name, {"accepted": 0, "failed": 0})[outcome] = value
    return groups


def acceptance(counters: dict, by: str) -> dict[str, dict]:
    """Documents attempted and accepted per prompt (or quality bucket), from the LLM stage's counters, and the
    same for their chunks: a long document is rewritten only if every chunk is, so both rates are shown."""
    docs, chunks = _outcomes(counters, by), _outcomes(counters, f"{by}_chunks")
    result = {}
    for name, g in sorted(docs.items()):
        attempted = g["accepted"] + g["failed"]
        c = chunks.get(name, {"accepted": 0, "failed": 0})
        result[name] = {
            "attempted": attempted,
            "accepted": g["accepted"],
            "acceptance": round(g["accepted"] / attempted, 4) if attempted else 0.0,
            "chunks_attempted": c["accepted"] + c["failed"],
            "chunks_accepted": c["accepted"],
        }
    return result


def summarize(cfg: Config, layout: Layout, ledger: list[dict], timings: dict[str, float]) -> dict:
    from collections import Counter

    curate = {**step_stats(layout.logs / "curate"), **step_stats(layout.logs / "rephrase")}
    finalize = {**step_stats(layout.logs / "rows"), **step_stats(layout.logs / "finalize")}
    rephrase = next((v for k, v in curate.items() if k.endswith("rephrase")), {})
    columns = ["kind", "n_tokens", "prompt", "quality_bucket", "source_record"]
    rows = pq.read_table(layout.dataset / "data", columns=columns).to_pylist()
    shards = sorted((layout.dataset / "data").glob("*.parquet"))
    splits = {
        split: sum(pq.ParquetFile(f).metadata.num_rows for f in shards if f"{split}-" in f.name)
        for split in ("train", "validation")
    }
    tokens, by_prompt, by_bucket, by_source = Counter(), Counter(), Counter(), Counter()
    for row in rows:
        tokens[row["kind"]] += row["n_tokens"] or 0
        by_prompt[row["prompt"] or "original"] += row["n_tokens"] or 0
        by_bucket[str(row["quality_bucket"])] += row["n_tokens"] or 0
        by_source[(row["source_record"] or "?").rsplit(":", 1)[0]] += row["n_tokens"] or 0
    total_tokens = sum(tokens.values())
    return {
        "run": cfg.run.name,
        "records": len(ledger),
        "fates": dict(Counter(r["fate"] for r in ledger)),
        "drops": dict(Counter(f"{r['stage']}/{r['reason']}" for r in ledger if r["fate"] == "dropped")),
        "dataset": {
            "rows": dict(Counter(r["kind"] for r in rows)),
            "splits": {k: v for k, v in splits.items() if v or k == "train"},
            "tokens": dict(tokens),
            "synthetic_token_share": round(tokens["synthetic"] / total_tokens, 4) if total_tokens else 0.0,
            "target_synthetic_share": cfg.mix.synthetic_share,
            "rows_by_prompt": dict(Counter(r["prompt"] for r in rows if r["prompt"])),
            "tokens_by_prompt": dict(by_prompt),
            "tokens_by_bucket": dict(sorted(by_bucket.items())),
            "tokens_by_source_file": dict(by_source.most_common()),
        },
        "llm": {
            "engine": cfg.rephrase.llm.engine,
            "model": cfg.rephrase.llm.model,
            "requests": rephrase.get("requests", 0),
            "candidates_generated": rephrase.get("candidates", 0),
            "candidates_accepted": rephrase.get("accepted", 0),
            "tokens_in": rephrase.get("n_tokens_in", 0),
            "tokens_out": rephrase.get("output_tokens", 0),
            "rejections": {k.removeprefix("rejected_"): v for k, v in rephrase.items() if k.startswith("rejected_")},
            "failures": {
                k.removeprefix("failed_"): v
                for k, v in rephrase.items()
                if k.startswith("failed_") and not k.startswith("failed_by_")
            },
            "checked": {k.removeprefix("checked_"): v for k, v in rephrase.items() if k.startswith("checked_")},
            "failed_by": {k.removeprefix("failed_by_"): v for k, v in rephrase.items() if k.startswith("failed_by_")},
            "by_prompt": acceptance(rephrase, "prompt"),
            "by_bucket": acceptance(rephrase, "bucket"),
            "resampled": rephrase.get("resampled", 0),
            "replayed_from_checkpoint": rephrase.get("replayed_from_checkpoint", 0),
        },
        "quality": quality_summary(
            curate.get("quality", {}), cfg.quality.classifiers, cfg.quality.scale, cfg.quality.ensemble
        ),
        "wall_time_s": timings,
        "stages": {"curate": curate, "finalize": finalize},
    }


def run_config(cfg: Config) -> RunResult | Submitted:
    layout = Layout(Path(cfg.resolve(cfg.run.output)))
    preflight(cfg, layout)
    prompts = select_prompts(cfg.resolve(cfg.rephrase.prompts_dir), {p for r in cfg.routing.rules for p in r.prompts})
    restart_curate_if_changed(cfg, layout, {name: prompt.hash for name, prompt in prompts.items()})
    stages = build_stages(cfg, layout)
    if reopened := reopen_failed_llm_tasks(layout, llm_stage_name(cfg)):
        print(f"rephrase: rerunning tasks {reopened}: their documents had engine errors (llm_error) last time")
    ensure_calibration(cfg, layout.calibration_file)
    reset_finalize(layout)
    if cfg.run.executor == "slurm":
        return Submitted(layout, submit_stages(cfg.run, stages, layout.logs))
    return finish_run(cfg, layout, run_stages(cfg.run, stages, layout.logs))


def finish_run(cfg: Config, layout: Layout, timings: dict[str, float]) -> RunResult:
    """After the last stage: ledger, stats.json, card and the optional push, from what the stages wrote."""
    start = time.perf_counter()
    for stats_dir in {p.parent.parent for p in layout.logs.glob("**/stats/*.json")}:
        merge_task_stats(stats_dir)  # Slurm merges in jobs of its own that may not have run yet
    data = layout.dataset / "data"
    if not any(data.glob("*.parquet")):  # every record was dropped before the dataset: empty, still loadable
        write_empty_dataset(data)
    if cfg.output.push is None or not cfg.output.push.stream:  # streamed shards keep the names the Hub has
        name_shards(data)
    docs = read_docs(layout)
    ledger = build_ledger(layout.work, docs, layout.ledger_file)
    stats = summarize(cfg, layout, ledger, {**timings, "finish": round(time.perf_counter() - start, 2)})
    layout.stats_file.write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    write_card(cfg, layout, stats)
    if cfg.output.push is not None:
        push_finished(cfg, layout)
    return RunResult(layout, stats, ledger)


def push_finished(cfg: Config, layout: Layout) -> None:
    """The same push as `rephrase push`, after everything is written locally: a Hub failure loses nothing, and
    the message says how to resume it."""
    from rephrase.hub import push_dataset

    target = cfg.output.push
    try:
        result = push_dataset(layout.out, target.repo_id, private=target.private, revision=target.revision)
    except Exception as e:
        raise RuntimeError(
            f"the run finished and {layout.dataset} is complete, but pushing it failed: {e}. Resume the upload with "
            f"`rephrase push {layout.out} --repo-id {target.repo_id}`"
            + (f" --revision {target.revision}" if target.revision else "")
            + (" --private" if target.private else "")
        ) from e
    print(f"rephrase: pushed {len(result.uploaded)} files ({len(result.unchanged)} unchanged) to {result.url}")
