"""The client half of the `vllm-server` engine: chat completions against a vLLM OpenAI-compatible server, either
one rephrase spawned (rephrase.llm.server) or an existing URL."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future

from rephrase.llm.engine import (
    Completion,
    Conversation,
    Generation,
    LazyTokenizer,
    Sampling,
    Submits,
    per_conversation,
)
from rephrase.llm.server import ServerError, VLLMServer
from rephrase.models import model_identity

logger = logging.getLogger(__name__)


class OpenAIServerEngine(Submits, LazyTokenizer):
    """Chat completions (`n=` candidates per request) against a vLLM OpenAI-compatible server.

    Requests run concurrently up to `max_concurrency` on one event loop that the engine runs in its own thread (so
    the HTTP connection pool survives, and a request submitted at any time is sent at once). Timeouts, connection
    errors, 408/409/429 and 5xx are retried by the openai client itself, `max_retries` times with exponential
    backoff (0.5 s doubling, at most 8 s, logged by the `openai` logger); a request that still fails becomes that
    conversation's `Generation.error`.

    A server this engine started and that died or hung (killed by the OOM killer, a crashed engine core) is
    restarted, at most `max_restarts` times per engine, and each request that failed because of it is sent once
    more; an existing server (`server_url`) is not ours to restart, so its failures are only recorded.

    `api_key` is sent as `Authorization: Bearer`; None sends no Authorization header at all. The environment's
    `OPENAI_API_KEY` is never read here: a key goes to a server only when the caller chose it for that server.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        served_model_name: str | None = None,
        request_timeout_s: float = 600,
        max_concurrency: int = 64,
        max_retries: int = 3,
        server: VLLMServer | None = None,
        max_restarts: int = 2,
        api_key: str | None = None,
    ) -> None:
        from openai import AsyncOpenAI, Omit

        self.model, self.server, self.max_concurrency = model, server, max_concurrency
        self.restarts_left = max_restarts
        self.model_id, self.model_revision = model_identity(model)
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self._restarts = 0  # how many restarts so far: a request that failed before the latest one is retried
        self._restart_lock = asyncio.Lock()
        self._limit = asyncio.Semaphore(max_concurrency)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-engine-loop", daemon=True)
        self._thread.start()
        # The client refuses to start without a key (and would read OPENAI_API_KEY): without one it gets a
        # placeholder that every request omits again with the header.
        self._headers = {} if api_key else {"Authorization": Omit()}
        self._client = AsyncOpenAI(
            base_url=f"{self.base_url}/v1",
            api_key=api_key or "none",
            timeout=request_timeout_s,
            max_retries=max_retries,
        )
        try:
            self.served_model_name = served_model_name or self._run(self._served_model()).result()
        except BaseException:
            self.close()
            raise

    async def _served_model(self) -> str:
        """The id the server serves `model` under: its only one, or the one equal to the model or its name."""
        from openai import APIError

        try:
            ids = [m.id async for m in self._client.models.list(extra_headers=self._headers)]
        except APIError as e:
            raise ServerError(f"no OpenAI-compatible server answers at {self.base_url}/v1/models: {e}") from e
        if len(ids) == 1:
            return ids[0]
        for name in (self.model, self.model_id):
            if name in ids:
                return name
        raise ServerError(f"server {self.base_url} serves {ids}, none of them {self.model!r}; set the model to one")

    def _run(self, coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def submit(self, conversations, n, sampling) -> list[Future[Generation]]:
        ns, samplings = per_conversation(conversations, n, sampling)
        return [self._run(self._answer(c, k, s)) for c, k, s in zip(conversations, ns, samplings, strict=True)]

    async def _answer(self, conversation: Conversation, n: int, sampling: Sampling) -> Generation:
        """One request; once more if our server died and was restarted (by this request or another) meanwhile."""
        restarts = self._restarts
        generation = await self._generate_one(conversation, n, sampling)
        if generation.error is None or self.server is None:
            return generation
        async with self._restart_lock:  # one restart for all the requests a dead server failed
            if self._restarts == restarts and self.restarts_left > 0:
                if await asyncio.to_thread(self.server.healthy):
                    return generation  # this request failed on its own
                self.restarts_left -= 1
                await asyncio.to_thread(self.server.restart)
                self._restarts += 1
        if self._restarts == restarts:
            return generation
        return await self._generate_one(conversation, n, sampling)

    async def _generate_one(self, conversation: Conversation, n: int, sampling: Sampling) -> Generation:
        from openai import APIError

        async with self._limit:
            try:
                response = await self._client.chat.completions.create(
                    model=self.served_model_name,
                    messages=conversation,  # type: ignore[arg-type]
                    n=n,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens,
                    extra_body={"return_token_ids": True},  # vLLM: per-candidate token counts
                    extra_headers=self._headers,
                )
            except APIError as e:
                logger.warning("request to %s failed (retried if transient): %s", self.base_url, e)
                return Generation(error=f"{type(e).__name__}: {e}")
        completions = []
        for choice in sorted(response.choices, key=lambda c: c.index):
            text = choice.message.content or ""
            token_ids = (choice.model_extra or {}).get("token_ids")
            if token_ids is None:  # not a vLLM server: count as our tokenizer does
                token_ids = self.tokenizer.encode(text, add_special_tokens=False)
            completions.append(Completion(text, choice.finish_reason, len(token_ids)))
        return Generation(completions)

    def close(self) -> None:
        """Close the client and its loop, then stop the server if this engine started it."""
        try:
            if self._thread.is_alive():
                self._run(self._client.close()).result()
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
            self._loop.close()
        finally:
            if self.server is not None:
                self.server.stop()
