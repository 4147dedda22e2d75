"""When rerunning into an existing output folder resumes, and when it starts the curate stages again.

datatrove resumes by skipping tasks with a completion marker, whatever changed since. After an edited prompt, a
new language threshold, more tasks or a new input file, that would keep the old rewrites (or shard the new file
list against old completions, losing or doubling files) without a word. So curate's work is fingerprinted: what
decides which documents reach work/docs and how they are rewritten. When it differs, curate's outputs and markers
are removed and it runs again; generations that still apply come back from the LLM checkpoint, whose keys hold
the prompt hash, model and sampling, so an unchanged document costs no model call. The stages after curate always
rerun, so mix, dedup (MinHash, semantic), rebalancing and output settings can change without any of this.
"""

from __future__ import annotations

import hashlib
import json
import shutil

from rephrase.config import Config
from rephrase.inputs import expand_source, resolve_input_path
from rephrase.layout import CURATE, REPHRASE, Layout
from rephrase.pipeline import split_llm_stage

# How a run talks to its engine or cluster: changing these never changes what curate produces.
_LLM_TRANSPORT = {"server_url", "api_key_env", "request_timeout_s", "max_concurrency", "max_retries"}


def curate_parts(cfg: Config, prompt_hashes: dict[str, str]) -> dict[str, str]:
    """Each input of curate's result, hashed on its own so a message can say which one changed."""
    rephrase = cfg.rephrase.model_dump(exclude={"prefetch_docs", "prompts_dir", "llm"})
    rephrase["llm"] = cfg.rephrase.llm.model_dump(exclude=_LLM_TRANSPORT)
    slurm_tasks = cfg.run.slurm.llm_tasks if cfg.run.slurm is not None else None
    parts = {
        "input": cfg.input.model_dump(),
        "input files": {s.path: expand_source(resolve_input_path(cfg, s.path)) for s in cfg.input.sources},
        "language": cfg.language.model_dump(),
        "heuristics": [h.model_dump() for h in cfg.heuristics],
        "quality": cfg.quality.model_dump(),
        "routing": cfg.routing.model_dump(),
        "perplexity": cfg.perplexity.model_dump() if cfg.perplexity else None,
        "rephrase": rephrase,
        "prompts": prompt_hashes,
        "dedup.exact": cfg.dedup.exact,
        "tasks": [cfg.run.tasks, cfg.run.seed, split_llm_stage(cfg), slurm_tasks],
    }
    return {
        k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()[:16]
        for k, v in parts.items()
    }


def restart_curate_if_changed(cfg: Config, layout: Layout, prompt_hashes: dict[str, str]) -> list[str]:
    """Compare with the fingerprint the folder was last run with; on a change, clear curate and say why.

    Returns the changed parts ([] when resuming, or on a first run)."""
    path = layout.fingerprint_file
    parts = curate_parts(cfg, prompt_hashes)
    before = json.loads(path.read_text()) if path.is_file() else None
    changed = (
        [] if before is None else sorted(k for k in parts.keys() | before.keys() if parts.get(k) != before.get(k))
    )
    if changed:
        print(
            f"rephrase: {', '.join(changed)} changed since {layout.out} was last run: curate runs again; "
            "generations that still apply are replayed from the LLM checkpoint"
        )
        for folder in (layout.docs, layout.filtered, layout.curate_ledger):
            shutil.rmtree(folder, ignore_errors=True)
        for stage in (CURATE, REPHRASE):
            shutil.rmtree(layout.logs / stage, ignore_errors=True)
    layout.work.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(parts, indent=1))
    tmp.replace(path)  # a kill mid-write leaves the old fingerprint, never half of one
    return changed
