"""The LLM stage as the tests build it: the `wikipedia` prompt over one task's checkpoint folder, with only what a
test varies (engine config, sampling, validators, batch size) as arguments."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rephrase.config import LLMConfig, SamplingConfig, ValidatorConfig
from rephrase.llm.engine import Engine
from rephrase.llm.prompts import load_prompts
from rephrase.llm.stage import RephraseStep

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"


def wikipedia_step(
    checkpoints: Path,
    *,
    llm: LLMConfig | None = None,
    sampling: SamplingConfig | None = None,
    validators: list[str] = ("not_empty",),
    batch_size: int = 4,
    engine: Callable[[], Engine] | None = None,
) -> RephraseStep:
    return RephraseStep(
        llm or LLMConfig(),
        sampling or SamplingConfig(n=1, resample_rounds=0),
        {"wikipedia": load_prompts(PROMPTS)["wikipedia"]},
        [ValidatorConfig(use=name) for name in validators],
        batch_size=batch_size,
        chunk_tokens=1000,
        max_doc_tokens=5000,
        seed=0,
        checkpoint_dir=str(checkpoints),
        engine=engine,
    )
