"""The dataset card (`dataset/README.md`): Hub YAML metadata plus what a reader needs to trust the data: the
pipeline config, prompts with versions and hashes, the model, the filtering funnel and the achieved mix."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from rephrase.config import Config
    from rephrase.pipeline import Layout


def _size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "n>1M"


def write_card(cfg: Config, layout: Layout, stats: dict) -> None:
    rows = sum(stats["dataset"]["rows"].values())
    meta = {
        "license": cfg.output.license,
        "pretty_name": cfg.output.pretty_name or cfg.run.name,
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(rows)],
        "tags": ["synthetic", "rephrased", "pretraining"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
    }
    prompts = sorted({p for p in stats["dataset"]["rows_by_prompt"]})
    funnel = "\n".join(f"| {k} | {v} |" for k, v in sorted(stats["drops"].items(), key=lambda kv: -kv[1]))
    fates = "\n".join(f"| {k} | {v} |" for k, v in stats["fates"].items())
    body = (
        f"""# {meta["pretty_name"]}

Pretraining text curated and rephrased by rephrase: web documents filtered by language,
heuristics and a fastText quality classifier; selected documents rewritten by `{cfg.rephrase.llm.model}`
({cfg.rephrase.llm.engine} engine) with rejection sampling; exact dedup over originals and rewrites; mixed by tokens.

## Rows
Columns: `id`, `text`, `kind` (`original` | `synthetic`), `source_id` (input document a row came from), `prompt`
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
Prompts: {", ".join(prompts) or "none"}.

## What happened to the {stats["records"]} input records
| fate | records |
|---|---|
{fates}

| dropped at / reason | records |
|---|---|
{funnel}

## Generation
Candidates generated: {stats["llm"]["candidates_generated"]}, accepted: {stats["llm"]["candidates_accepted"]}.
Rejections by validator: `{json.dumps(stats["llm"]["rejections"])}`.

## Pipeline config
```yaml
{yaml.safe_dump(cfg.model_dump(exclude={"base_dir"}), sort_keys=False)}```
"""
    )
    layout.dataset.mkdir(parents=True, exist_ok=True)
    (layout.dataset / "README.md").write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body)
