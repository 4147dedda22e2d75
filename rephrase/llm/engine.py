"""One engine interface over vLLM offline, a vLLM OpenAI-compatible server, and plain transformers.

What callers rely on: `generate` takes every conversation of a batch in one call (the engine batches and the n
candidates of a conversation share one prefill), returns one `Generation` per conversation in input order, and
never raises for a single failed request: a server error becomes `Generation(completions=[], error=...)` so the
LLM stage records `llm_error` for that document and goes on. Errors that make the engine unusable (no model, a
server that will not start or answer) are raised when the engine is built.

Seeding: vLLM engines are seeded once, at start (`seed`), not per request: a per-request `SamplingParams(seed=...)`
crashes vLLM's CPU engine when a long prompt is prefilled in chunks. `Sampling.seed` is used by the transformers
engine, which re-seeds torch at every call.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from rephrase.models import check_model, model_identity

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from rephrase.llm.server import ServerOptions

logger = logging.getLogger(__name__)

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

    def generate(self, conversations: list[Conversation], n: int, sampling: Sampling) -> list[Generation]: ...

    def close(self) -> None: ...


def render(tokenizer: PreTrainedTokenizerBase, conversations: list[Conversation]) -> tuple[list[str], list[int]]:
    """Each conversation as the model sees it (chat template + generation prompt) and its length in tokens."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    return texts, [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _too_long(lengths: list[int], max_model_len: int) -> list[Generation | None]:
    """An error for each prompt that leaves no room to generate; vLLM would otherwise fail the whole batch."""
    error = "prompt_too_long: {} prompt tokens, max_model_len {}"
    return [Generation(error=error.format(n, max_model_len)) if n >= max_model_len else None for n in lengths]


def cpu_env_defaults() -> None:
    """On vLLM's CPU platform, default to all cores and a 2 GiB KV cache (the user's environment wins).

    vLLM CPU reserves one core for its frontend by default, which on a 2-core machine halves throughput (14 vs
    98 tok/s measured); 2 GiB of KV cache holds every batch the demo sends. Set before the engine or server
    starts, since its processes read these at start and cache them.
    """
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


class LazyTokenizer:
    """Loads the model's HF tokenizer on first use: a remote-server engine may never need it."""

    model: str
    revision: str | None = None

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model, revision=self.revision)


class VLLMEngine(LazyTokenizer):
    """`vllm.LLM` in this process (its workers are spawned); `engine_args` go to `LLM(...)` unchanged."""

    def __init__(self, model: str, *, engine_args: dict[str, Any] | None = None, seed: int = 0) -> None:
        engine_args = dict(engine_args or {})
        self.model, self.revision = model, engine_args.get("revision")
        self.model_id, self.model_revision = model_identity(model, self.revision)
        cpu_env_defaults()
        from vllm import LLM

        self.llm = LLM(model=model, seed=seed, **engine_args)

    def generate(self, conversations: list[Conversation], n: int, sampling: Sampling) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=n, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens
        )
        limit = self.llm.llm_engine.model_config.max_model_len
        results = _too_long(render(self.tokenizer, conversations)[1], limit)
        todo = [i for i, r in enumerate(results) if r is None]
        outputs = self.llm.chat([conversations[i] for i in todo], params, use_tqdm=False) if todo else []
        for i, out in zip(todo, outputs, strict=True):
            results[i] = Generation([Completion(o.text, o.finish_reason, len(o.token_ids)) for o in out.outputs])
        return results  # type: ignore[return-value]  # every None was filled

    def close(self) -> None:
        """Shut down the engine-core process now rather than at garbage collection."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None and hasattr(llm.llm_engine, "engine_core"):
            llm.llm_engine.engine_core.shutdown()


class TransformersEngine(LazyTokenizer):
    """`AutoModelForCausalLM.generate` on CPU: the reference path, slower than vLLM but with no server or workers.

    Reads `dtype` and `revision` from `engine_args`, and `max_num_seqs` (vLLM's name) as the most sequences
    (conversations x n) per `generate` call, since padding makes memory grow with the batch's longest prompt.
    Conversations are sorted by length before batching so a batch pads little; results come back in input order.
    """

    def __init__(self, model: str, *, engine_args: dict[str, Any] | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        engine_args = dict(engine_args or {})
        self.model, self.revision = model, engine_args.pop("revision", None)
        self.model_id, self.model_revision = model_identity(model, self.revision)
        self.max_seqs = int(engine_args.pop("max_num_seqs", 16))
        max_model_len = engine_args.pop("max_model_len", None)
        dtype = engine_args.pop("dtype", "auto")
        if engine_args:
            logger.info("transformers engine ignores engine_args %s (vLLM-only)", sorted(engine_args))
        torch.set_num_threads(os.cpu_count() or 1)
        self.hf_model = AutoModelForCausalLM.from_pretrained(model, revision=self.revision, dtype=dtype).eval()
        self.max_model_len = int(max_model_len or self.hf_model.config.max_position_embeddings)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = self.hf_model.generation_config.eos_token_id
        self.eos_ids = {self.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}

    def generate(self, conversations: list[Conversation], n: int, sampling: Sampling) -> list[Generation]:
        import torch

        texts, lengths = render(self.tokenizer, conversations)
        results = _too_long(lengths, self.max_model_len)
        order = sorted((i for i, r in enumerate(results) if r is None), key=lengths.__getitem__)
        per_call = max(1, self.max_seqs // n)
        torch.manual_seed(sampling.seed)
        for start in range(0, len(order), per_call):
            chunk = order[start : start + per_call]
            for i, gen in zip(chunk, self._generate_batch([texts[i] for i in chunk], n, sampling), strict=True):
                results[i] = gen
        return results  # type: ignore[return-value]  # every None was filled

    def _generate_batch(self, texts: list[str], n: int, sampling: Sampling) -> list[Generation]:
        import torch

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        sample = sampling.temperature > 0
        with torch.inference_mode():
            out = self.hf_model.generate(
                **enc,
                do_sample=sample,
                temperature=sampling.temperature if sample else None,
                top_p=sampling.top_p if sample else None,
                top_k=0,  # 0 disables top-k (the default is 50): vLLM and the server apply none either
                max_new_tokens=sampling.max_tokens,
                num_return_sequences=n,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        completions = []
        for ids in new:  # rows are conversation-major: conversation 0's n candidates first
            end = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
            text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
            completions.append(
                Completion(text, "length", len(ids)) if end is None else Completion(text, "stop", end + 1)
            )
        return [Generation(completions[k * n : (k + 1) * n]) for k in range(len(texts))]

    def close(self) -> None:
        self.hf_model = None


def build_engine(
    kind: EngineKind,
    model: str,
    *,
    engine_args: dict[str, Any] | None = None,
    server_url: str | None = None,
    server: ServerOptions | None = None,
    log_path: str | Path | None = None,
    request_timeout_s: float = 600,
    max_concurrency: int = 64,
    max_retries: int = 3,
    seed: int = 0,
) -> Engine:
    """Build the engine a config names. `model` is already resolved (`rephrase.models.resolve_model`).

    `vllm-server` without `server_url` spawns a server (options in `server`, log at `log_path`) that the engine's
    `close()` stops; with `server_url` it uses that server and `model`/`engine_args` only name the model.
    """
    from rephrase.llm.openai_engine import OpenAIServerEngine  # both import this module: not at the top
    from rephrase.llm.server import VLLMServer

    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown engine {kind!r}; known: {', '.join(ENGINE_KINDS)}")
    client: dict[str, Any] = dict(
        request_timeout_s=request_timeout_s, max_concurrency=max_concurrency, max_retries=max_retries
    )
    if kind == "vllm-server" and server_url is not None:
        return OpenAIServerEngine(server_url, model, **client)
    check_model(model)
    if kind == "vllm":
        return VLLMEngine(model, engine_args=engine_args, seed=seed)
    if kind == "transformers":
        return TransformersEngine(model, engine_args=engine_args)
    name = model_identity(model)[0]
    spawned = VLLMServer(
        model, served_model_name=name, engine_args=engine_args, seed=seed, options=server, log_path=log_path
    )
    spawned.start()
    try:
        return OpenAIServerEngine(spawned.base_url, model, served_model_name=name, server=spawned, **client)
    except BaseException:
        spawned.stop()
        raise
