"""The client half of the `vllm-server` engine: chat completions against a vLLM OpenAI-compatible server, either
one rephrase spawned (rephrase.llm.server) or an existing URL."""

from __future__ import annotations

import asyncio
import logging
import os

from rephrase.llm.engine import Completion, Conversation, Generation, LazyTokenizer, Sampling
from rephrase.llm.server import ServerError, VLLMServer
from rephrase.models import model_identity

logger = logging.getLogger(__name__)


class OpenAIServerEngine(LazyTokenizer):
    """Chat completions (`n=` candidates per request) against a vLLM OpenAI-compatible server.

    Requests run concurrently up to `max_concurrency` on one event loop owned by the engine (so the HTTP connection
    pool survives between calls). Timeouts, connection errors, 408/409/429 and 5xx are retried by the openai
    client itself, `max_retries` times with exponential backoff (0.5 s doubling, at most 8 s, logged by the
    `openai` logger); a request that still fails becomes that conversation's `Generation.error`.

    A server this engine started and that died or hung (killed by the OOM killer, a crashed engine core) is
    restarted, at most `max_restarts` times per engine, and the failed conversations of that call are sent once
    more; an existing server (`server_url`) is not ours to restart, so its failures are only recorded.
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
    ) -> None:
        from openai import AsyncOpenAI

        self.model, self.server, self.max_concurrency = model, server, max_concurrency
        self.restarts_left = max_restarts
        self.model_id, self.model_revision = model_identity(model)
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self._loop = asyncio.new_event_loop()
        self._client = AsyncOpenAI(
            base_url=f"{self.base_url}/v1",
            api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
            timeout=request_timeout_s,
            max_retries=max_retries,
        )
        try:
            self.served_model_name = served_model_name or self._loop.run_until_complete(self._served_model())
        except BaseException:
            self.close()
            raise

    async def _served_model(self) -> str:
        """The id the server serves `model` under: its only one, or the one equal to the model or its name."""
        from openai import APIError

        try:
            ids = [m.id async for m in self._client.models.list()]
        except APIError as e:
            raise ServerError(f"no OpenAI-compatible server answers at {self.base_url}/v1/models: {e}") from e
        if len(ids) == 1:
            return ids[0]
        for name in (self.model, self.model_id):
            if name in ids:
                return name
        raise ServerError(f"server {self.base_url} serves {ids}, none of them {self.model!r}; set the model to one")

    def generate(self, conversations: list[Conversation], n: int, sampling: Sampling) -> list[Generation]:
        results = self._loop.run_until_complete(self._generate_all(conversations, n, sampling))
        failed = [i for i, g in enumerate(results) if g.error is not None]
        if failed and self.server is not None and self.restarts_left > 0 and not self.server.healthy():
            self.restarts_left -= 1
            self.server.restart()
            retried = self._loop.run_until_complete(
                self._generate_all([conversations[i] for i in failed], n, sampling)
            )
            for i, generation in zip(failed, retried, strict=True):
                results[i] = generation
        return results

    async def _generate_all(self, conversations: list[Conversation], n: int, sampling: Sampling) -> list[Generation]:
        limit = asyncio.Semaphore(self.max_concurrency)
        return list(await asyncio.gather(*(self._generate_one(c, n, sampling, limit) for c in conversations)))

    async def _generate_one(
        self, conversation: Conversation, n: int, sampling: Sampling, limit: asyncio.Semaphore
    ) -> Generation:
        from openai import APIError

        async with limit:
            try:
                response = await self._client.chat.completions.create(
                    model=self.served_model_name,
                    messages=conversation,  # type: ignore[arg-type]
                    n=n,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens,
                    extra_body={"return_token_ids": True},  # vLLM: per-candidate token counts
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
            if not self._loop.is_closed():
                self._loop.run_until_complete(self._client.close())
                self._loop.close()
        finally:
            if self.server is not None:
                self.server.stop()
