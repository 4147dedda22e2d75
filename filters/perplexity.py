"""Model-aware scoring: each document's loss and perplexity under a reference causal LM.

Why: a small reference model's perplexity is a cheap fluency signal. CCNet (Wenzek et al., 2019) bucketed
CommonCrawl by the perplexity of a Wikipedia-trained 5-gram model; "Perplexed by Perplexity" (Ankner et al.,
2024) pruned pretraining data with a 125M-parameter model's perplexity. Menus, link lists and cookie banners
score high (or, when repeated across the web, suspiciously low); encyclopedic prose scores low. The score is a
signal to route, bucket, rebalance or order by (`rephrase.rebalance`), and only a filter when `max_perplexity` is
set, because its scale depends on the model and the language: measure a threshold on your data first.

Scoring: tokens from the tokenizer with its own special tokens (Llama-style tokenizers add BOS, SmolLM2 adds
none), truncated to `max_tokens`; every token after the first is predicted from the ones before it; `mean_loss` is
the mean negative log-likelihood in nats per predicted token and `perplexity` = exp(mean_loss). A document with
fewer than two tokens has no prediction and gets neither key (counted as `unscored`).

Why truncate: cost grows with length (and a padded batch costs its longest member), a 32k-token page would
dominate a batch, and per-token loss falls as context grows, so scoring every document on the same budget of
leading tokens keeps scores comparable between short and long documents. 512 tokens is the first few paragraphs:
enough to tell prose from boilerplate.

Two engines, one contract (`Scorer`): `transformers` (one forward pass per length-sorted, right-padded batch) and
`vllm` (prompt logprobs: `SamplingParams(prompt_logprobs=0, max_tokens=1)` on the same token ids). On this CPU
their perplexities differ by at most about 1e-4 relative (`scripts/bench_curation.py --vllm` measures it);
vLLM's start-up (about a minute on CPU) pays off on large inputs and GPUs.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Literal, Protocol

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from pydantic import BaseModel, ConfigDict, Field


class PerplexityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers: forward passes (CPU reference); vllm: prompt logprobs (GPU)."
    )
    model: str = Field(
        "bundled:smollm2-135m", description="Reference causal LM: local folder, Hub id, or bundled:smollm2-135m."
    )
    max_tokens: int = Field(
        512, ge=2, description="Leading tokens scored per document; the rest is ignored (cost and comparability)."
    )
    batch_size: int = Field(64, ge=1, description="Documents per engine call.")
    batch_tokens: int = Field(
        4096,
        ge=2,
        description="transformers: most (padded) tokens per forward pass. Logits take batch_tokens x vocabulary x 4 "
        "bytes: 4096 x 49,152 x 4 = 0.8 GB for SmolLM2, twice that at the peak of the loss computation.",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="transformers: dtype, revision. vllm: passed to vllm.LLM (e.g. dtype, enforce_eager, "
        "max_model_len, which must exceed max_tokens).",
    )
    max_perplexity: float | None = Field(
        None, gt=1, description="Drop documents above this perplexity (perplexity_too_high); null only scores."
    )


class Scorer(Protocol):
    tokenizer: Any
    """The model's HF tokenizer."""

    def nll(self, sequences: list[list[int]]) -> list[float]:
        """Per sequence, in input order: the summed negative log-likelihood (nats) of tokens 1..n-1, each given the
        tokens before it; 0.0 for a sequence of fewer than two tokens."""
        ...


def token_sequences(tokenizer: Any, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Each text's token ids with the tokenizer's own special tokens, cut to `max_tokens`."""
    return tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]


def length_batches(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive runs of `order` (ascending length) whose padded size, rows x longest, stays within `budget`;
    a row longer than the budget goes alone."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and lengths[i] * (len(current) + 1) > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def perplexity_of(nll_sum: float, n_tokens: int) -> tuple[float, float] | None:
    """(mean_loss, perplexity) for a sequence of `n_tokens` whose predicted tokens cost `nll_sum` nats in all."""
    if n_tokens < 2:
        return None
    mean_loss = nll_sum / (n_tokens - 1)
    return mean_loss, math.exp(mean_loss)


class TransformersScorer:
    """Forward passes over length-sorted, right-padded batches: right padding keeps position ids 0..n-1 for every
    row and the causal mask keeps padding out of real tokens' context, so a row scores as it would alone."""

    def __init__(self, model: str, engine_args: dict[str, Any], batch_tokens: int) -> None:
        from rephrase.llm.transformers_engine import TransformersEngine

        self.engine = TransformersEngine(model, engine_args=engine_args)
        self.tokenizer, self.batch_tokens = self.engine.tokenizer, batch_tokens

    def nll(self, sequences: list[list[int]]) -> list[float]:
        import torch

        model = self.engine.hf_model
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        lengths = [len(s) for s in sequences]
        out = [0.0] * len(sequences)
        order = sorted((i for i, n in enumerate(lengths) if n >= 2), key=lengths.__getitem__)
        for rows in length_batches(order, lengths, self.batch_tokens):
            width = lengths[rows[-1]]
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, : lengths[i]] = torch.tensor(sequences[i])
                mask[r, : lengths[i]] = 1
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # -100: cross_entropy's ignore_index
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                # (rows x positions, vocabulary): contiguous classes; a transposed (rows, vocabulary, positions)
                # view is many times slower on CPU
                losses = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
                ).view(targets.shape)
            for r, i in enumerate(rows):
                out[i] = float(losses[r].sum())
        return out


class VLLMScorer:
    """vLLM prompt logprobs: with `prompt_logprobs=0` vLLM returns, for every prompt position after the first, the
    logprob of the token actually there; `max_tokens=1` because nothing needs generating."""

    def __init__(self, model: str, engine_args: dict[str, Any], seed: int, max_tokens: int) -> None:
        from rephrase.llm.vllm_offline import VLLMEngine

        self.engine = VLLMEngine(model, engine_args=engine_args, seed=seed)
        self.tokenizer = self.engine.tokenizer
        limit = self.engine.llm.llm_engine.model_config.max_model_len
        if max_tokens >= limit:
            self.engine.close()
            raise ValueError(
                f"perplexity max_tokens {max_tokens} leaves no room in vLLM's max_model_len {limit}: lower max_tokens "
                f"or set engine_args.max_model_len above {max_tokens}"
            )

    def nll(self, sequences: list[list[int]]) -> list[float]:
        from vllm import SamplingParams, TokensPrompt

        todo = [i for i, s in enumerate(sequences) if len(s) >= 2]
        params = SamplingParams(prompt_logprobs=0, max_tokens=1)
        prompts = [TokensPrompt(prompt_token_ids=sequences[i]) for i in todo]
        results = self.engine.llm.generate(prompts, params, use_tqdm=False) if todo else []
        out = [0.0] * len(sequences)
        for i, result in zip(todo, results, strict=True):
            ids = sequences[i]
            out[i] = -sum(result.prompt_logprobs[t][ids[t]].logprob for t in range(1, len(ids)))
        return out


def build_scorer(config: PerplexityConfig, seed: int = 0) -> Scorer:
    """The config's engine on its resolved model (`bundled:smollm2-135m` is converted once and cached)."""
    from rephrase.models import check_model, resolve_model

    model = resolve_model(config.model)
    check_model(model)
    if config.engine == "vllm":
        return VLLMScorer(model, config.engine_args, seed, config.max_tokens)
    return TransformersScorer(model, config.engine_args, config.batch_tokens)


def score_texts(scorer: Scorer, texts: list[str], max_tokens: int) -> list[tuple[float, float] | None]:
    """(mean_loss, perplexity) per text, in input order; None for a text with fewer than two tokens."""
    sequences = token_sequences(scorer.tokenizer, texts, max_tokens)
    return [perplexity_of(nll, len(seq)) for nll, seq in zip(scorer.nll(sequences), sequences, strict=True)]


class PerplexityFilter(BaseFilter):
    """Sets `metadata["mean_loss"]` and `metadata["perplexity"]` on every scored document; drops documents above
    `max_perplexity` (if set) as `perplexity_too_high`. The model loads on the first batch, in the worker."""

    name = "perplexity"

    def __init__(self, config: PerplexityConfig, seed: int = 0, exclusion_writer: DiskWriter | None = None) -> None:
        super().__init__(exclusion_writer, batch_size=config.batch_size)
        self.config, self.seed = config, seed

    @cached_property
    def scorer(self) -> Scorer:
        return build_scorer(self.config, self.seed)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        scores = score_texts(self.scorer, [d.text for d in batch], self.config.max_tokens)
        results: list[bool | tuple[bool, str]] = []
        for doc, score in zip(batch, scores, strict=True):
            if score is None:
                self.stat_update("unscored")
                results.append(True)
                continue
            doc.metadata["mean_loss"], doc.metadata["perplexity"] = score
            self.stat_update("scored")
            too_high = self.config.max_perplexity is not None and score[1] > self.config.max_perplexity
            results.append((False, "perplexity_too_high") if too_high else True)
        return results
