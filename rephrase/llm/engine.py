"""The engine contract, shared by the backends (vllm_offline, openai_engine, transformers_engine; built by factory).

What callers rely on: `submit` hands conversations to the engine and returns at once, one Future per
conversation; requests submitted while others run join them in the engine's running batch (vLLM's continuous
batching), so the LLM stage can send a document's resample, or the next batch, the moment it knows it, instead of
waiting for a whole call to end. The n candidates of a conversation are one request and share one prefill.
`generate` is submit-and-wait. A failed request never raises: a server error becomes `Generation(completions=[],
error=...)` so the LLM stage records `llm_error` for that document and goes on. Errors that make the engine
unusable (no model, a server that will not start or answer) are raised when the engine is built; an engine that
dies mid-run fails the futures it holds with that error.

Seeding: vLLM engines are seeded once, at start (`seed`), not per request: a per-request `SamplingParams(seed=...)`
crashes vLLM's CPU engine when a long prompt is prefilled in chunks. `Sampling.seed` is used by the transformers
engine, which re-seeds torch at every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Conversation = list[dict[str, str]]
EngineKind = Literal["vllm", "vllm-server", "transformers"]
ENGINE_KINDS: tuple[EngineKind, ...] = ("vllm", "vllm-server", "transformers")


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    """0 is greedy; higher is more diverse. Same meaning in every engine."""
    top_p: float = 0.95
    """Nucleus sampling mass in (0, 1]; 1 disables it."""
    max_tokens: int = 512
    """Most tokens generated per candidate; a candidate cut here has finish_reason "length"."""
    seed: int = 0
    """Seed for the transformers engine (per call). vLLM engines use the engine seed given to `build_engine`."""


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    """"stop" (end of sequence or stop string), "length" (hit max_tokens), or what the server reported."""
    output_tokens: int
    """Generated tokens, counting the end-of-sequence token when there is one (as vLLM counts)."""


@dataclass(frozen=True)
class Generation:
    """The n candidates for one conversation, or no candidates and the error that prevented them."""

    completions: list[Completion] = field(default_factory=list)
    error: str | None = None


class Engine(Protocol):
    model_id: str
    """What provenance records: the bundled model's name, a local folder's name, or the Hub id."""
    model_revision: str
    """The bundled model's GGUF sha256 prefix, the Hub revision asked for, or "" if unknown."""

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's HF tokenizer (with its chat template), for token counting and chunking."""
        ...

    def submit(
        self, conversations: list[Conversation], n: int | Sequence[int], sampling: Sampling | Sequence[Sampling]
    ) -> list[Future[Generation]]:
        """Queue the conversations (n and sampling: one for all, or one per conversation); returns at once."""
        ...

    def generate(
        self, conversations: list[Conversation], n: int | Sequence[int], sampling: Sampling | Sequence[Sampling]
    ) -> list[Generation]: ...

    def close(self) -> None: ...


class Submits:
    """`generate` as submit-and-wait, for every engine (each defines `submit`)."""

    submit: Any

    def generate(
        self, conversations: list[Conversation], n: int | Sequence[int], sampling: Sampling | Sequence[Sampling]
    ) -> list[Generation]:
        return [future.result() for future in self.submit(conversations, n, sampling)]


def per_conversation(
    conversations: list[Conversation], n: int | Sequence[int], sampling: Sampling | Sequence[Sampling]
) -> tuple[list[int], list[Sampling]]:
    """n and sampling spelled out per conversation, as vLLM takes a list of SamplingParams."""
    ns = [n] * len(conversations) if isinstance(n, int) else list(n)
    samplings = [sampling] * len(conversations) if isinstance(sampling, Sampling) else list(sampling)
    if not len(ns) == len(samplings) == len(conversations):
        raise ValueError(f"{len(conversations)} conversations, {len(ns)} n values, {len(samplings)} samplings")
    return ns, samplings


def resolved(value: Generation) -> Future[Generation]:
    future: Future[Generation] = Future()
    future.set_result(value)
    return future


def render(tokenizer: PreTrainedTokenizerBase, conversations: list[Conversation]) -> tuple[list[str], list[int]]:
    """Each conversation as the model sees it (chat template + generation prompt) and its length in tokens."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    return texts, [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def too_long_errors(lengths: list[int], max_model_len: int) -> list[Generation | None]:
    """An error for each prompt that leaves no room to generate; vLLM would otherwise fail the whole batch."""
    error = "prompt_too_long: {} prompt tokens, max_model_len {}"
    return [Generation(error=error.format(n, max_model_len)) if n >= max_model_len else None for n in lengths]


class LazyTokenizer:
    """Loads the model's HF tokenizer on first use: a remote-server engine may never need it."""

    model: str
    revision: str | None = None

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model, revision=self.revision)


class EngineDied(RuntimeError):
    """The engine's process is gone (vLLM offline: its core): every request it held fails with this, and so does
    `submit`."""
