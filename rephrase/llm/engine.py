"""One engine interface over vLLM offline, a vLLM OpenAI-compatible server, and plain transformers.

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

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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


class EngineDied(RuntimeError):
    """The offline engine's core process is gone: every request it held fails with this, and so does `submit`."""


CLOSE_JOIN_S = 30.0
"""Seconds `close` waits for the loop thread to finish its step before forcing the engine core down."""
WATCH_S = 1.0
"""How often the watch thread checks the engine core while the loop may be blocked inside a step."""


class VLLMEngine(Submits, LazyTokenizer):
    """`vllm.LLM` in this process (its workers are spawned); `engine_args` go to `LLM(...)` unchanged.

    One thread (started on the first `submit`) owns the engine loop: it adds what was submitted since its last
    step (`LLM.enqueue_chat`) and steps the engine (`llm_engine.step()`, as `LLM.chat` does), so new requests
    join the running batch at the next step; every other thread only queues. `llm` stays usable directly (the
    perplexity filter calls `llm.generate`) as long as nothing was submitted to this engine.

    Every future handed out is held until settled, and any failure settles all held ones, so nobody waits on a
    dead engine: a request vLLM refuses becomes that conversation's `Generation.error`; a dead engine core fails
    every held request with `EngineDied`. A core that dies mid-step leaves `step()` blocked forever (vLLM 0.32's
    output thread stops without a word), so a watch thread checks the core processes every `WATCH_S` and fails
    the held requests itself. The engine's processes are guarded (rephrase.llm.reaper) so they die with this one;
    `record_dir` (the task's checkpoint folder) keeps their pids for a rerun to stop survivors.
    """

    def __init__(
        self, model: str, *, engine_args: dict[str, Any] | None = None, seed: int = 0, record_dir: Path | None = None
    ) -> None:
        from rephrase.llm.reaper import EngineGuard

        engine_args = dict(engine_args or {})
        self.model, self.revision = model, engine_args.get("revision")
        self.model_id, self.model_revision = model_identity(model, self.revision)
        self.name = f"vLLM offline engine ({self.model_id})"
        cpu_env_defaults()
        from vllm import LLM

        self._guard = EngineGuard(record_dir)
        try:
            self.llm = LLM(model=model, seed=seed, **engine_args)
        except BaseException:
            self._guard.release()
            raise
        self._guard.built()
        self._queued: list[tuple[list[Conversation], list, list[Future[Generation]]]] = []
        self._running: dict[str, Future[Generation]] = {}
        self._held: set[Future[Generation]] = set()
        self._wake = threading.Condition()
        self._loop: threading.Thread | None = None
        self._watch: threading.Thread | None = None
        self._broken: BaseException | None = None
        self._closing = False

    def submit(self, conversations, n, sampling) -> list[Future[Generation]]:
        from vllm import SamplingParams

        ns, samplings = per_conversation(conversations, n, sampling)
        limit = self.llm.llm_engine.model_config.max_model_len
        futures: list[Future[Generation]] = []
        todo: list[int] = []
        for i, too_long in enumerate(_too_long(render(self.tokenizer, conversations)[1], limit)):
            futures.append(resolved(too_long) if too_long else Future())
            if too_long is None:
                todo.append(i)
        if not todo:
            return futures
        params = [
            SamplingParams(n=ns[i], temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)
            for i in todo
            for s in [samplings[i]]
        ]
        with self._wake:
            if self._broken is not None:
                raise self._broken
            if self._closing:
                raise RuntimeError(f"{self.name} is closed")
            self._queued.append(([conversations[i] for i in todo], params, [futures[i] for i in todo]))
            self._held.update(futures[i] for i in todo)
            if self._loop is None:
                self._loop = threading.Thread(target=self._run, name="vllm-engine-loop", daemon=True)
                self._watch = threading.Thread(target=self._watch_core, name="vllm-engine-watch", daemon=True)
                self._loop.start()
                self._watch.start()
            # notify_all: the watch thread waits on this condition too, and notify() may wake only the watch
            self._wake.notify_all()
        return futures

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not (self._queued or self._running or self._closing or self._broken):
                        self._wake.wait()
                    if self._closing or self._broken:
                        return
                    queued, self._queued = self._queued, []
                for conversations, params, futures in queued:
                    self._enqueue(conversations, params, futures)
                if self._running:
                    for out in self.llm.llm_engine.step():
                        if out.finished and (future := self._running.pop(out.request_id, None)) is not None:
                            completions = [Completion(o.text, o.finish_reason, len(o.token_ids)) for o in out.outputs]
                            self._settle(future, Generation(completions))
        except BaseException as e:  # the engine is unusable: whoever waits hears why
            logger.exception("%s: engine loop failed", self.name)
            self._fail(EngineDied(f"{self.name} failed: {self._core_death() or f'{type(e).__name__}: {e}'}"), e)

    def _enqueue(self, conversations: list[Conversation], params: list, futures: list[Future[Generation]]) -> None:
        """Add requests to the engine; a request it refuses (vLLM adds all or none of a call) is retried alone, and
        one refused alone is that conversation's error. A refusal by a dead core is the engine's death: raised."""
        try:
            ids = self.llm.enqueue_chat(conversations, params, use_tqdm=False)
        except Exception as e:
            if self._core_death() is not None:
                raise
            if len(conversations) > 1:
                for conversation, param, future in zip(conversations, params, futures, strict=True):
                    self._enqueue([conversation], [param], [future])
                return
            logger.warning("%s refused a request: %s: %s", self.name, type(e).__name__, e)
            self._settle(futures[0], Generation(error=f"vllm_refused: {type(e).__name__}: {e}"))
            return
        # enqueue_chat returns internal ids ("<counter>-<random>"); outputs carry the counter part
        self._running.update((rid.split("-", 1)[0], f) for rid, f in zip(ids, futures, strict=True))

    def _settle(self, future: Future[Generation], result: Generation) -> None:
        with self._wake:
            if future not in self._held:  # already failed by the watch thread
                return
            self._held.discard(future)
        future.set_result(result)

    def _fail(self, error: BaseException | None, cause: BaseException | None = None) -> None:
        """Settle every held future: with `error`, or cancelled when None (closed). Safe from any thread."""
        if error is not None and cause is not None:
            error.__cause__ = cause
        with self._wake:
            if error is not None and self._broken is None:
                self._broken = error
            held, self._held = self._held, set()
            self._queued, self._running = [], {}
            self._wake.notify_all()
        for future in held:
            if error is None:
                future.cancel()
            else:
                future.set_exception(error)

    def _core_death(self) -> str | None:
        """Why the engine core is dead ("EngineCore pid 123 exited with code -9"), or None while it lives."""
        if self.llm is None:
            return None
        resources = getattr(self.llm.llm_engine.engine_core, "resources", None)  # absent for an in-process core
        manager = getattr(resources, "engine_manager", None)
        for proc in getattr(manager, "processes", []):
            if proc.exitcode is not None:
                return f"{proc.name} pid {proc.pid} exited with code {proc.exitcode}"
        if getattr(resources, "engine_dead", False):
            return "vLLM reports its engine core dead"
        return None

    def _watch_core(self) -> None:
        """Fail what the engine holds once its core is dead, and wake the loop out of vLLM's blocked `step()`."""
        while True:
            with self._wake:
                if self._closing or self._broken is not None:
                    return
                self._wake.wait(WATCH_S)
            if (death := self._core_death()) is not None:
                logger.error("%s: %s", self.name, death)
                self._fail(EngineDied(f"{self.name} died: {death}"))
                self._unblock_step()
                return

    def _unblock_step(self) -> None:
        """`step()` waits on the client's output queue; an error there makes it raise (as vLLM's async client does)."""
        outputs = getattr(self.llm.llm_engine.engine_core, "outputs_queue", None)
        if outputs is not None:
            outputs.put_nowait(RuntimeError("engine core died"))

    def close(self) -> None:
        """Stop the loop thread (after its current step; a step that does not end within CLOSE_JOIN_S is abandoned),
        cancel what it still held, then shut down the engine core and stop any of its processes left."""
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        for thread in (self._loop, self._watch):
            if thread is not None:
                thread.join(timeout=CLOSE_JOIN_S)
        if self._loop is not None and self._loop.is_alive():
            logger.warning("%s: loop still in a step after %.0f s; forcing the engine down", self.name, CLOSE_JOIN_S)
            self._unblock_step()
        self._fail(None)
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None and hasattr(llm.llm_engine, "engine_core"):
            llm.llm_engine.engine_core.shutdown(timeout=CLOSE_JOIN_S)
        self._guard.release()


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
        results = _too_long(lengths, self.max_model_len)
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


def api_key_from(variable: str | None) -> str | None:
    """The API key in environment variable `variable`; None for no variable. A named variable that is unset or
    empty is an error, not a silent request without a key."""
    if variable is None:
        return None
    if not (key := os.environ.get(variable)):
        raise ValueError(f"rephrase.llm.api_key_env names {variable}, which is not set; export it or set null")
    return key


def build_engine(
    kind: EngineKind,
    model: str,
    *,
    engine_args: dict[str, Any] | None = None,
    server_url: str | None = None,
    api_key_env: str | None = None,
    server: ServerOptions | None = None,
    log_path: str | Path | None = None,
    request_timeout_s: float = 600,
    max_concurrency: int = 64,
    max_retries: int = 3,
    seed: int = 0,
    record_dir: Path | None = None,
) -> Engine:
    """Build the engine a config names. `model` is already resolved (`rephrase.models.resolve_model`).

    `vllm-server` without `server_url` spawns a server (options in `server`, log at `log_path`) that the engine's
    `close()` stops; with `server_url` it uses that server and `model`/`engine_args` only name the model.
    `vllm` records its processes in `record_dir` (rephrase.llm.reaper), where a rerun finds any a kill left.

    A spawned server is sent its own random key; `server_url` is sent the key in the environment variable
    `api_key_env`, or none when that is None (never OPENAI_API_KEY unasked: the URL may be anyone's).
    """
    from rephrase.llm.openai_engine import OpenAIServerEngine  # both import this module: not at the top
    from rephrase.llm.server import VLLMServer

    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown engine {kind!r}; known: {', '.join(ENGINE_KINDS)}")
    client: dict[str, Any] = dict(
        request_timeout_s=request_timeout_s, max_concurrency=max_concurrency, max_retries=max_retries
    )
    if kind == "vllm-server" and server_url is not None:
        return OpenAIServerEngine(server_url, model, api_key=api_key_from(api_key_env), **client)
    check_model(model)
    if kind == "vllm":
        return VLLMEngine(model, engine_args=engine_args, seed=seed, record_dir=record_dir)
    if kind == "transformers":
        return TransformersEngine(model, engine_args=engine_args)
    name = model_identity(model)[0]
    spawned = VLLMServer(
        model, served_model_name=name, engine_args=engine_args, seed=seed, options=server, log_path=log_path
    )
    spawned.start()
    try:
        return OpenAIServerEngine(
            spawned.base_url, model, served_model_name=name, server=spawned, api_key=spawned.api_key, **client
        )
    except BaseException:
        spawned.stop()
        raise
