"""Plain transformers generation behind the engine contract: the reference path, no server or workers."""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from rephrase.llm.engine import (
    Completion,
    Conversation,
    Generation,
    LazyTokenizer,
    Sampling,
    Submits,
    per_conversation,
    render,
    too_long_errors,
)
from rephrase.models import model_identity

logger = logging.getLogger(__name__)


class TransformersEngine(Submits, LazyTokenizer):
    """`AutoModelForCausalLM.generate` on CPU: the reference path, slower than vLLM but with no server or workers.

    Reads `dtype` and `revision` from `engine_args`, and `max_num_seqs` (vLLM's name) as the most sequences
    (conversations x n) per `generate` call, since padding makes memory grow with the batch's longest prompt.
    Conversations are sorted by length before batching so a batch pads little; results come back in input order.
    No continuous batching: each `submit` is generated whole, one after another, on the engine's own thread.
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
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="transformers-engine")

    def submit(self, conversations, n, sampling) -> list[Future[Generation]]:
        futures: list[Future[Generation]] = [Future() for _ in conversations]
        call = self._pool.submit(self._generate, conversations, *per_conversation(conversations, n, sampling))

        def settle(done: Future) -> None:
            error = None if done.cancelled() else done.exception()
            for i, future in enumerate(futures):
                if done.cancelled():
                    future.cancel()
                elif error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(done.result()[i])

        call.add_done_callback(settle)
        return futures

    def _generate(self, conversations: list[Conversation], ns: list[int], samplings: list[Sampling]) -> list:
        """One `generate` per distinct (n, sampling), seeded by its sampling, in length-sorted chunks."""
        import torch

        texts, lengths = render(self.tokenizer, conversations)
        results = too_long_errors(lengths, self.max_model_len)
        groups: dict[tuple[int, Sampling], list[int]] = {}
        for i in sorted((i for i, r in enumerate(results) if r is None), key=lengths.__getitem__):
            groups.setdefault((ns[i], samplings[i]), []).append(i)
        for (n, sampling), order in groups.items():
            per_call = max(1, self.max_seqs // n)
            torch.manual_seed(sampling.seed)
            for start in range(0, len(order), per_call):
                chunk = order[start : start + per_call]
                for i, gen in zip(chunk, self._generate_batch([texts[i] for i in chunk], n, sampling), strict=True):
                    results[i] = gen
        return results

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
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.hf_model = None
