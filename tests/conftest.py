"""Shared fixtures. Model and corpus caches persist across runs in REPHRASE_CACHE (default ~/.cache/rephrase):
they are built from registry packages on first use, which is the path a new user takes too."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm-cache")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def missing_service(what: str) -> None:
    """Skip a test whose system service (Chromium, a local Slurm) is not there, or fail it under
    REPHRASE_REQUIRE_SERVICES=1: CI sets that after installing the services, so a CI image where one broke
    cannot pass by skipping the only tests that exercise it."""
    if os.environ.get("REPHRASE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what}, and REPHRASE_REQUIRE_SERVICES=1 (set by .ci/run) requires it")
    pytest.skip(what)


def write_jsonl_bytes(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    from rephrase.sample_data import ensure_sample

    return ensure_sample()


@pytest.fixture(scope="session")
def wiki_texts(sample_dir: Path) -> list[str]:
    rows = [json.loads(line) for line in (sample_dir / "wiki.jsonl").read_text().splitlines() if line.strip()]
    return [r["text"] for r in rows]
