"""Secrets and private paths stay out of what a run shows others: the pushed dataset card, a spawned server's
command line, and requests to a server the user named (issue 22, item 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fake_llm import FakeLLM

from rephrase.card import write_card
from rephrase.config import ConfigError, load_config
from rephrase.layout import Layout
from rephrase.llm.engine import Sampling
from rephrase.llm.factory import build_engine
from rephrase.llm.prompts import load_prompt
from rephrase.llm.server import ServerError, VLLMServer
from rephrase.redact import REDACTED, is_secret_name, redact

REPO = Path(__file__).resolve().parent.parent
HF_TOKEN = "hf_cardLeakTestQ7wZ3kLmN9xVbR2t"
SERVER_PASSWORD = "s3rverPassw0rd"
OPENAI_KEY = "sk-proj-notForThisServer0123456789"
SAMPLING = Sampling(temperature=0.2, top_p=0.95, max_tokens=16, seed=0)
# What a run config may hold and a published card must not: credentials and the machine's own folders.
PRIVATE = {
    "rephrase.llm.server_url": f"https://alice:{SERVER_PASSWORD}@llm.internal.example:8443/v1",
    "rephrase.llm.engine": "vllm-server",
    "rephrase.llm.model": "/scratch/alice/models/llama-3-8b-instruct",
    "rephrase.llm.engine_args": {"hf_token": HF_TOKEN, "max_model_len": 4096},
    "input.sources": [
        {"path": "/home/alice/private-crawl/shard-0001.jsonl"},
        {"path": "hf://datasets/HuggingFaceFW/fineweb/sample/10BT/000_00000.parquet", "limit": 5},
    ],
    "run.output": "/scratch/alice/runs/secret-run-output",
    "run.slurm": {
        "partition": "gpu",
        "env_command": f"module load cuda/12 && export HF_TOKEN={HF_TOKEN}",
        "sbatch_args": {"account": "alice-private-account"},
    },
    "run.ray.address": "ray://10.20.30.40:10001",
}
LEAKS = [
    HF_TOKEN,
    SERVER_PASSWORD,
    "llm.internal.example",
    "/scratch/alice",
    "/home/alice",
    "private-crawl",
    "secret-run-output",
    "module load",
    "alice-private-account",
    "10.20.30.40",
    "heuristicSecretValue",
    "engine_args",
    "server_url",
]


def _stats() -> dict:
    """The least `write_card` reads: one kind of row, no finalize extras."""
    return {
        "records": 3,
        "dataset": {
            "rows": {"original": 2, "synthetic": 1},
            "tokens": {"original": 200, "synthetic": 90},
            "splits": {"train": 3},
            "rows_by_prompt": {"wikipedia@v1": 1},
            "synthetic_token_share": 0.31,
        },
        "stages": {"finalize": {}},
        "drops": {"language/wrong_language": 1},
        "fates": {"kept": 2, "dropped": 1},
        "llm": {"candidates_generated": 2, "candidates_accepted": 1, "rejections": {}},
    }


def test_card_shows_what_describes_the_data_and_no_secret_or_private_path(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml", [], PRIVATE)
    cfg.heuristics[1].params["api_key"] = "heuristicSecretValue"  # no filter takes one today; a plugin might
    layout = Layout(tmp_path / "out")
    write_card(cfg, layout, _stats())
    card = (layout.dataset / "README.md").read_text()

    assert [leak for leak in LEAKS if leak in card] == []
    section = yaml.safe_load(card.split("## Pipeline config\n```yaml\n")[1].split("```")[0])
    assert [s["path"] for s in section["input"]["sources"]] == [
        "shard-0001.jsonl",
        "hf://datasets/HuggingFaceFW/fineweb/sample/10BT/000_00000.parquet",
    ]
    wikipedia = load_prompt(REPO / "prompts" / "wikipedia.yaml")
    assert section["rephrase"]["prompts"] == {wikipedia.ref: wikipedia.hash}
    assert section["rephrase"]["model"] == "llama-3-8b-instruct"
    assert section["rephrase"]["sampling"] == cfg.rephrase.sampling.model_dump()
    assert section["heuristics"][1]["params"] == {"min_doc_words": 40, "api_key": REDACTED}
    assert section["routing"] == cfg.routing.model_dump() and section["mix"] == cfg.mix.model_dump()
    assert set(section) >= {"language", "quality", "dedup", "rebalance", "curriculum"}
    assert "`llama-3-8b-instruct`" in card and "- `shard-0001.jsonl`" in card


def test_redact_replaces_credential_shapes_and_leaves_the_rest() -> None:
    assert redact("https://bob:pw@host:1/v1, http://host/x@y") == f"https://{REDACTED}@host:1/v1, http://host/x@y"
    assert redact(f"export HF_TOKEN={HF_TOKEN}; max_tokens=512") == f"export HF_TOKEN={REDACTED}; max_tokens=512"
    assert redact("?password=hunter2&page=3") == f"?password={REDACTED}&page=3"
    assert redact(f"key {OPENAI_KEY} and Bearer abc.def") == f"key {REDACTED} and Bearer {REDACTED}"
    kept = "hf://datasets/org/name@main/data.parquet hf_dataset_rephrased_v2 bundled:quality_starter"
    assert redact(kept) == kept


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        *[("hf_token", True), ("OPENAI_API_KEY", True), ("apikey", True), ("db-password", True)],
        *[("max_num_batched_tokens", False), ("tokenizer", False), ("text_key", False), ("id_key", False)],
    ],
)
def test_secret_names_are_words_not_substrings(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_spawned_server_gets_secrets_and_its_key_through_the_environment(tmp_path: Path) -> None:
    """argv is visible in `ps` and printed by vLLM into the server log; the environment is not."""
    args = {"hf_token": HF_TOKEN, "max_model_len": 2048, "enforce_eager": True}
    server = VLLMServer("some/model", served_model_name="m", engine_args=args, log_path=tmp_path / "a.log")
    argv = " ".join(server.command())
    assert HF_TOKEN not in argv and server.api_key not in argv
    assert "--max-model-len 2048" in argv and "--enforce-eager" in argv and "hf-token" not in argv
    env = server.environment()
    assert env["HF_TOKEN"] == HF_TOKEN and env["VLLM_API_KEY"] == server.api_key and len(server.api_key) >= 32
    other = VLLMServer("some/model", served_model_name="m", log_path=tmp_path / "b.log")
    assert other.api_key != server.api_key and "HF_TOKEN" not in other.secret_env


@pytest.mark.parametrize("name", ["api_key", "s3_secret_access_key"])
def test_secret_engine_args_vllm_cannot_read_from_the_environment_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ServerError, match=f"engine_args.{name}"):
        VLLMServer("some/model", served_model_name="m", engine_args={name: "x" * 24}, log_path=tmp_path / "c.log")


def _ask(url: str, api_key_env: str | None = None) -> None:
    engine = build_engine("vllm-server", "some/model", server_url=url, api_key_env=api_key_env, max_retries=0)
    try:
        (generation,) = engine.generate([[{"role": "user", "content": "Text:\nOne. Two."}]], n=1, sampling=SAMPLING)
    finally:
        engine.close()
    assert generation.error is None


def test_user_server_gets_no_key_unless_the_config_names_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("MY_SERVER_KEY", "server-key-for-this-url")
    with FakeLLM() as llm:
        _ask(llm.url)
        assert llm.authorizations == [None, None]  # /v1/models, then the chat request
        _ask(llm.url, api_key_env="MY_SERVER_KEY")
        assert llm.authorizations[2:] == ["Bearer server-key-for-this-url"] * 2


def test_named_key_variable_must_be_set_and_needs_a_server_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_SERVER_KEY", raising=False)
    with pytest.raises(ValueError, match="api_key_env names MY_SERVER_KEY, which is not set"):
        build_engine("vllm-server", "some/model", server_url="http://127.0.0.1:9/v1", api_key_env="MY_SERVER_KEY")
    with pytest.raises(ConfigError, match="api_key_env OPENAI_API_KEY is only sent to server_url"):
        load_config(REPO / "configs" / "demo.yaml", [], {"rephrase.llm.api_key_env": "OPENAI_API_KEY"})
