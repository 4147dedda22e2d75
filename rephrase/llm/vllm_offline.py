"""vLLM's offline engine (`vllm.LLM`) in this process, behind the engine contract, with continuous batching."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from rephrase.llm.engine import (
    Completion,
    Conversation,
    EngineDied,
    Generation,
    LazyTokenizer,
    Submits,
    per_conversation,
    render,
    resolved,
    too_long_errors,
)
from rephrase.llm.vllm_cpu import cpu_env_defaults
from rephrase.models import model_identity

logger = logging.getLogger(__name__)


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
        for i, too_long in enumerate(too_long_errors(render(self.tokenizer, conversations)[1], limit)):
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
