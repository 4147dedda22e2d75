"""The dataset card (`dataset/README.md`): Hub YAML metadata plus what a reader needs to trust the data: the
pipeline config, prompts with versions and hashes, the model, the filtering funnel and the achieved mix.

The card is public once pushed: its config is the allowlisted `rephrase.card_config` section, sources and the model
are named without local folders, and the finished text goes through `rephrase.redact` as a whole.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import yaml

from rephrase.card_config import card_config, prompt_hashes, public_model, public_path
from rephrase.redact import redact

if TYPE_CHECKING:
    from rephrase.config import Config
    from rephrase.layout import Layout


def _size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "n>1M"


def _table(title: str, counts: dict) -> str:
    return f"| {title} | tokens |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in counts.items()) + "\n"


def _finalize_section(stats: dict) -> str:
    """Tokens per prompt and quality bucket, and what semantic dedup, rebalancing and the curriculum did."""
    ds, steps = stats["dataset"], stats["stages"]["finalize"]
    files = dict(list(ds.get("tokens_by_source_file", {}).items())[:50])
    parts = ["## Mix by prompt, quality bucket and input file\n", _table("prompt", ds.get("tokens_by_prompt", {})),
             "", _table("quality bucket", ds.get("tokens_by_bucket", {})), "",
             _table("input file (top 50)", files)]  # fmt: skip
    if sem := steps.get("semantic_dedup"):
        removed = sum(v for k, v in sem.items() if k.startswith("duplicate_"))
        compare = steps.get("semantic_compare", {})
        curve = ", ".join(
            f"{k.removeprefix('would_drop_at_')}: {v}" for k, v in compare.items() if k.startswith("would_")
        )
        parts.append(f"\nSemantic dedup removed {removed} of {sem.get('total', 0)} rows (rows removed per threshold: "
                     f"{curve}).\n")  # fmt: skip
    if reb := steps.get("rebalance"):
        groups = sorted(k.removeprefix("tokens_in_") for k in reb if k.startswith("tokens_in_"))
        rows = [f"| {g} | {reb[f'tokens_in_{g}']} | {reb.get(f'tokens_out_{g}', 0)} |" for g in groups]
        header = "\n## Rebalancing (last rule)\n| group | tokens before | tokens after |\n|---|---|---|\n"
        parts.append(header + "\n".join(rows) + "\n")
    if cur := steps.get("curriculum"):
        stages = sorted((int(k.split("_")[1]), v) for k, v in cur.items() if k.startswith("stage_"))
        header = (
            "\n## Curriculum\nEach stage is in shards of its own, `data/stage-0000/`, `data/stage-0001/`, ... (column "
            "`curriculum_stage`): train in curriculum order by reading the files in name order, without shuffling "
            "across them (for example `load_dataset(..., streaming=True)` and no `.shuffle()`, or one stage folder "
            "at a time). Within a stage, rows keep their input order; shuffle within a stage if you like.\n"
        )
        parts.append(header + "| stage | tokens |\n|---|---|\n" + "\n".join(f"| {i} | {v} |" for i, v in stages))
    return "\n".join(parts)


def source_datasets(cfg: Config) -> list[str]:
    """Hub datasets the input came from (`hf://datasets/org/name/...` sources), as the card's `source_datasets`."""
    ids = []
    for source in cfg.input.sources:
        if source.path.startswith("hf://datasets/"):
            org, _, rest = source.path.removeprefix("hf://datasets/").partition("/")
            ids.append(f"{org}/{rest.split('/')[0].split('@')[0]}")
    return sorted(set(ids))


def write_card(cfg: Config, layout: Layout, stats: dict) -> None:
    rows = sum(stats["dataset"]["rows"].values())
    meta = {
        "license": cfg.output.license,
        "pretty_name": cfg.output.pretty_name or cfg.run.name,
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(rows)],
        "tags": ["synthetic", "rephrased", "pretraining"],
        **({"source_datasets": ids} if (ids := source_datasets(cfg)) else {}),
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": s, "path": f"data/{'stage-*/' if cfg.curriculum else ''}*{s}-*.parquet"}
                    for s in stats["dataset"]["splits"]
                ],
            }
        ],
    }
    prompts = sorted({p for p in stats["dataset"]["rows_by_prompt"]})
    funnel = "\n".join(f"| {k} | {v} |" for k, v in sorted(stats["drops"].items(), key=lambda kv: -kv[1]))
    fates = "\n".join(f"| {k} | {v} |" for k, v in stats["fates"].items())
    sources = "\n".join(
        f"- `{public_path(src.path)}`" + (f" (first {src.limit} records per task)" if src.limit >= 0 else "")
        for src in cfg.input.sources
    )
    body = (
        f"""# {meta["pretty_name"]}

Pretraining text curated and rephrased by rephrase: web documents filtered by language,
heuristics and a fastText quality classifier; selected documents rewritten by `{public_model(cfg.rephrase.llm.model)}`
({cfg.rephrase.llm.engine} engine) with rejection sampling; exact dedup over originals and rewrites; mixed by tokens.

## Rows
Columns: `id`, `text`, `kind` (`original` | `synthetic`), `source_id` (input document a row came from),
`source_record` (its input file and line), `prompt`
(name@version, null for originals), `prompt_hash`, `model`, `model_revision`, `language`, `quality_score`,
`quality_bucket`, `n_tokens`, `sampling`, `candidate_index`, `attempts`, `validators` (JSON: each validator's score).

| kind | rows | tokens |
|---|---|---|
"""
        + "\n".join(
            f"| {k} | {v} | {stats['dataset']['tokens'].get(k, 0)} |" for k, v in stats["dataset"]["rows"].items()
        )
        + f"""

Synthetic token share: {stats["dataset"]["synthetic_token_share"]:.3f} (target: {cfg.mix.synthetic_share}).
Splits (rows): {", ".join(f"{k} {v}" for k, v in stats["dataset"]["splits"].items())}; a source document and its
rewrites are always in the same split.
Prompts: {", ".join(prompts) or "none"}.

## Sources
{sources}

## What happened to the {stats["records"]} input records
| fate | records |
|---|---|
{fates}

| dropped at / reason | records |
|---|---|
{funnel}

{_finalize_section(stats)}
## Generation
Candidates generated: {stats["llm"]["candidates_generated"]}, accepted: {stats["llm"]["candidates_accepted"]}.
Rejections by validator: `{json.dumps(stats["llm"]["rejections"])}`.

## Pipeline config
```yaml
{yaml.safe_dump(card_config(cfg, prompt_hashes(cfg)), sort_keys=False)}```
"""
    )
    layout.dataset.mkdir(parents=True, exist_ok=True)
    card = "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body
    (layout.dataset / "README.md").write_text(redact(card))
