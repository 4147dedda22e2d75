"""The `Pipeline config` section of the dataset card: the settings that describe the data, named one by one.

The card is published with the dataset (`rephrase push`), and a run config also holds what is nobody else's
business: `server_url` (which may carry credentials), `engine_args` (vLLM takes `hf_token`), Slurm's `env_command`
and `sbatch_args`, the Ray address, output and local paths. Dumping the config minus a list of bad keys would
publish every field added later; this allowlist publishes a new field only once someone names it here. Sections
that only say what was done to the text (language, heuristics, routing, sampling, validators, dedup, mix,
rebalancing, curriculum) go whole; sections that also say where the run ran give their data fields only.

Local paths (inputs, classifier and model folders) become their last part, the name rows and the ledger already
use; `hf://` and `bundled:` references and Hub model ids stay, since anyone can resolve them. Any value under a
secret-looking key (a heuristic's or validator's params) is replaced, and `rephrase.redact` then scrubs every
string of the card.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rephrase.llm.prompts import select_prompts
from rephrase.redact import REDACTED, is_secret_name

if TYPE_CHECKING:
    from rephrase.config import Config

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def public_path(path: str) -> str:
    """An input or classifier path as the card shows it: `hf://` and `bundled:` as they are, else the file name
    (a glob's last part), never the folders of the machine that ran."""
    if path.startswith(("hf://", "bundled:")):
        return path
    return Path(path).name


def public_model(ref: str) -> str:
    """A model reference as the card shows it: `bundled:` refs and Hub ids as they are, a local folder by name."""
    if ref.startswith("bundled:") or (_HUB_ID.match(ref) and not Path(ref).expanduser().exists()):
        return ref
    return Path(ref).name


def _hide_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_name(str(k)) else _hide_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_secrets(v) for v in value]
    return value


def prompt_hashes(cfg: Config) -> dict[str, str]:
    """ref -> content hash of each prompt the routing rules name, read from the prompts folder as the run read it."""
    names = {p for rule in cfg.routing.rules for p in rule.prompts}
    if not names:
        return {}
    return {p.ref: p.hash for p in select_prompts(cfg.resolve(cfg.rephrase.prompts_dir), names).values()}


def card_config(cfg: Config, prompt_hashes: dict[str, str]) -> dict[str, Any]:
    """The card's config section. `prompt_hashes`: ref (`name@vN`) -> content hash of each prompt the run used."""
    llm, quality, perplexity, semantic = cfg.rephrase.llm, cfg.quality, cfg.perplexity, cfg.dedup.semantic
    sources = [
        {"path": public_path(s.path), **s.model_dump(include={"format", "limit", "text_key", "id_key"})}
        for s in cfg.input.sources
    ]
    classifiers = [{"name": c.name, "model": public_path(c.path), "label": c.label} for c in quality.classifiers]
    section = {
        "run": {"name": cfg.run.name, "seed": cfg.run.seed},
        "input": {"sources": sources, **cfg.input.model_dump(include={"max_doc_bytes", "extract_html"})},
        "language": cfg.language.model_dump(),
        "heuristics": [h.model_dump() for h in cfg.heuristics],
        "quality": {
            "classifiers": classifiers,
            **quality.model_dump(include={"scale", "ensemble", "buckets", "calibration_docs"}),
        },
        "perplexity": None
        if perplexity is None
        else {
            "model": public_model(perplexity.model),
            **perplexity.model_dump(include={"engine", "max_tokens", "max_perplexity"}),
        },
        "routing": cfg.routing.model_dump(),
        "rephrase": {
            "model": public_model(llm.model),
            "engine": llm.engine,
            "prompts": dict(sorted(prompt_hashes.items())),
            "sampling": cfg.rephrase.sampling.model_dump(),
            "validators": [v.model_dump() for v in cfg.rephrase.validators],
            **cfg.rephrase.model_dump(include={"chunk_tokens", "max_doc_tokens"}),
        },
        "dedup": {
            "exact": cfg.dedup.exact,
            "minhash": cfg.dedup.minhash.model_dump(),
            "semantic": None
            if semantic is None
            else {"model": public_model(semantic.model), **semantic.model_dump(exclude={"model"})},
        },
        "mix": cfg.mix.model_dump(),
        "rebalance": [r.model_dump() for r in cfg.rebalance],
        "curriculum": None if cfg.curriculum is None else cfg.curriculum.model_dump(),
        "output": cfg.output.model_dump(include={"validation_share", "license"}),
    }
    return _hide_secrets(section)
