"""stats.json: a run's figures, merged from what its tasks counted (datatrove's per-stage stats and the
rephrase tallies of the finalize and ledger stages), never by reading the dataset or the ledger back."""

from __future__ import annotations

import json
from pathlib import Path

from filters.classifiers import quality_summary
from rephrase.config import Config
from rephrase.layout import COUNT, CURATE, EXACT, FINALIZE, REPHRASE, ROWS, Layout
from rephrase.plan import PlanSource
from rephrase.tally import merge


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


def records_read(layout: Layout) -> int:
    """Records the readers yielded (each becomes a document, a bad record included): what the ledger must hold."""
    return int(step_stats(layout.logs / CURATE).get("read", {}).get("total", 0))


def plan_source(cfg: Config, layout: Layout) -> PlanSource:
    mix, seed = cfg.mix, cfg.run.seed
    return PlanSource(str(layout.counts), mix.synthetic_share, mix.max_upsample, cfg.rebalance, cfg.curriculum, seed)


def llm_summary(cfg: Config, rephrase: dict) -> dict:
    """stats.json's `llm` section from the LLM stage's counters (also what `rephrase estimate` measures with)."""

    def prefixed(prefix: str, skip: str | None = None) -> dict:
        return {
            k.removeprefix(prefix): v
            for k, v in rephrase.items()
            if k.startswith(prefix) and not (skip and k.startswith(skip))
        }

    return {
        "engine": cfg.rephrase.llm.engine,
        "model": cfg.rephrase.llm.model,
        "requests": rephrase.get("requests", 0),
        "candidates_generated": rephrase.get("candidates", 0),
        "candidates_accepted": rephrase.get("accepted", 0),
        "tokens_in": rephrase.get("n_tokens_in", 0),
        "tokens_out": rephrase.get("output_tokens", 0),
        "rejections": prefixed("rejected_"),
        "failures": prefixed("failed_", skip="failed_by_"),
        "checked": prefixed("checked_"),
        "failed_by": prefixed("failed_by_"),
        "by_prompt": acceptance(rephrase, "prompt"),
        "by_bucket": acceptance(rephrase, "bucket"),
        "resampled": rephrase.get("resampled", 0),
        "replayed_from_checkpoint": rephrase.get("replayed_from_checkpoint", 0),
    }


def summarize(cfg: Config, layout: Layout, timings: dict[str, float]) -> dict:
    curate = {**step_stats(layout.logs / CURATE), **step_stats(layout.logs / REPHRASE)}
    later = (ROWS, EXACT, "semantic/compare", COUNT, FINALIZE)
    finalize = {k: v for stage in later for k, v in step_stats(layout.logs / stage).items()}
    rephrase = next((v for k, v in curate.items() if k.endswith("rephrase")), {})
    ds, ledger = merge(layout.tallies / "dataset"), merge(layout.tallies / "ledger")
    tokens = ds["tokens"]
    total_tokens = sum(tokens.values())
    mix = plan_source(cfg, layout).get().mix if layout.counts.is_dir() else None
    splits = ds["splits"]
    return {
        "run": cfg.run.name,
        "records": sum(ledger["fates"].values()),
        "fates": dict(ledger["fates"]),
        "drops": dict(ledger["drops"].most_common()),
        "dataset": {
            "rows": dict(ds["rows"]),
            "splits": {k: splits.get(k, 0) for k in ("train", "validation") if splits.get(k) or k == "train"},
            "tokens": dict(tokens),
            "synthetic_token_share": round(tokens.get("synthetic", 0) / total_tokens, 4) if total_tokens else 0.0,
            "target_synthetic_share": cfg.mix.synthetic_share,
            "mix_plan": {"before": mix.before, "after": mix.after, "multipliers": mix.multipliers} if mix else None,
            "rows_by_prompt": dict(ds["rows_by_prompt"]),
            "tokens_by_prompt": dict(ds["tokens_by_prompt"]),
            "tokens_by_bucket": dict(sorted(ds["tokens_by_bucket"].items())),
            "tokens_by_source_file": dict(ds["tokens_by_source_file"].most_common()),
        },
        "llm": llm_summary(cfg, rephrase),
        "quality": quality_summary(
            curate.get("quality", {}), cfg.quality.classifiers, cfg.quality.scale, cfg.quality.ensemble
        ),
        "quality_by_action": dict(ledger["quality_by_action"]),
        "wall_time_s": timings,
        "stages": {"curate": curate, "finalize": finalize},
    }
