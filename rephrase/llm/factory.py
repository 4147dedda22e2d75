"""The engine a config names, built from the backends: the one module that knows them all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rephrase.llm.engine import ENGINE_KINDS, Engine, EngineKind
from rephrase.llm.openai_engine import OpenAIServerEngine
from rephrase.llm.server import ServerOptions, VLLMServer
from rephrase.llm.transformers_engine import TransformersEngine
from rephrase.llm.vllm_offline import VLLMEngine
from rephrase.models import check_model, model_identity


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
