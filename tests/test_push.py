"""`rephrase push` against a local fake Hub (tests/fake_hub.py) with the real huggingface_hub client: what arrives,
retries, resume after a killed push, and that the token never shows up anywhere."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_hub import GITATTRIBUTES, FakeHub
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError

from rephrase.hub import ATTEMPTS, PushError, push_dataset

TOKEN = "hf_pushTestSecretQ7wZ3kLmN9xV"
REPO = Path(__file__).resolve().parent.parent
CARD = """---
license: odc-by
pretty_name: push test
task_categories:
- text-generation
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*.parquet
---

# push test
"""


def write_dataset(out: Path, shards: int, seed: int = 0) -> dict[str, bytes]:
    """A small real run output: card + parquet shards, plus what must never be pushed. Returns what must be."""
    data = out / "dataset" / "data"
    data.mkdir(parents=True, exist_ok=True)
    for old in data.glob("*.parquet"):
        old.unlink()
    for i in range(shards):
        texts = [f"shard {i} seed {seed} row {j}: " + "rephrased text " * (j % 7) for j in range(300)]
        table = pa.table({"id": [f"{seed}-{i}-{j}" for j in range(300)], "text": texts})
        pq.write_table(table, data / f"train-{i:05d}-of-{shards:05d}.parquet")
    (out / "dataset" / "README.md").write_text(CARD + f"\nseed {seed}\n")
    for private in (
        out / "work" / "docs" / "00000.parquet",
        out / "logs" / "run.log",
        out / "dataset" / ".cache" / "x",
    ):
        private.parent.mkdir(parents=True, exist_ok=True)
        private.write_bytes(b"never pushed")
    root = out / "dataset"
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.parts
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(TOKEN) as fake:
        yield fake


@pytest.fixture
def client(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """This process's huggingface_hub pointed at the fake hub. Its flags are read at import, hence setattr."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # tests/conftest.py turns it on for model tests
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the fake hub speaks LFS, not Xet's CAS
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)  # no agent-registry fetch to huggingface.co
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub


def test_push_sends_every_file_byte_identical_to_a_private_dataset_branch(
    tmp_path: Path, client: FakeHub, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    expected = write_dataset(tmp_path, shards=3)
    result = push_dataset(
        tmp_path, "me/demo", private=True, revision="v1", endpoint=client.url, max_files_per_commit=2
    )

    repo = client.repos["me/demo"]
    assert repo.repo_type == "dataset" and repo.private
    assert client.files("me/demo", "v1") == {".gitattributes": GITATTRIBUTES, **expected}
    assert client.files("me/demo", "main") == {".gitattributes": GITATTRIBUTES}
    shards = sorted(p for p in expected if p.endswith(".parquet"))
    assert [(c.branch, c.added) for c in client.commits] == [("v1", shards[:2]), ("v1", [shards[2], "README.md"])]
    assert sorted(client.lfs_puts) == sorted(sha256(expected[p]) for p in shards)
    assert all(not r.auth_ok for r in client.seen("lfs_put")), "the token must not go to the storage URL"
    assert all(r.auth_ok for r in client.requests if r.route != "lfs_put")
    assert not client.seen("unknown")
    assert result == dataclasses.replace(
        result, revision="v1", uploaded=(*shards, "README.md"), unchanged=(), commits=2
    )
    assert result.url == f"{client.url}/datasets/me/demo/tree/v1"
    assert TOKEN not in caplog.text + "".join(capfd.readouterr())


def test_rate_limit_and_server_error_on_a_commit_are_retried(
    tmp_path: Path, client: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    expected = write_dataset(tmp_path, shards=2)
    client.fail("commit", 500, retry_after=None)  # no Retry-After: exponential backoff, 1 s after the first try
    client.fail("commit", 429)  # with Retry-After: 0, which the retry honours
    push_dataset(tmp_path, "me/demo", endpoint=client.url)

    assert [r.status for r in client.seen("commit")] == [500, 429, 200]
    assert client.files("me/demo") == {".gitattributes": GITATTRIBUTES, **expected}
    retries = [r.getMessage() for r in caplog.records if r.name == "rephrase.hub" and r.levelno == logging.WARNING]
    assert len(retries) == 2 and "HTTP 500" in retries[0] and "in 1 s" in retries[0]
    assert "HTTP 429" in retries[1] and "in 0 s" in retries[1]


def test_a_hub_that_keeps_failing_gives_up_after_bounded_tries(tmp_path: Path, client: FakeHub) -> None:
    write_dataset(tmp_path, shards=1)
    client.fail("commit", *[503] * ATTEMPTS)
    with pytest.raises(HfHubHTTPError, match="503"):
        push_dataset(tmp_path, "me/demo", endpoint=client.url)
    assert len(client.seen("commit")) == ATTEMPTS and not client.commits


PUSH = """
import dataclasses, json, logging, sys
from pathlib import Path
from rephrase.hub import push_dataset
logging.basicConfig(level=logging.DEBUG)
result = push_dataset(Path(sys.argv[1]), sys.argv[2], revision=sys.argv[3], max_files_per_commit=2)
print(json.dumps(dataclasses.asdict(result)))
"""


def test_killed_push_resumes_without_resending_and_never_shows_the_token(tmp_path: Path, hub: FakeHub) -> None:
    out, hf_home = tmp_path / "out", tmp_path / "hf_home"
    expected = write_dataset(out, shards=3)
    shards = sorted(p for p in expected if p.endswith(".parquet"))
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(hf_home),  # no stored login of the machine's user is read or written
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_DEBUG": "1",  # huggingface_hub logs every request as a curl command: the token must still not appear
    }
    command = [sys.executable, "-c", PUSH, str(out), "me/demo", "v2"]

    hub.hang("commit", 2)
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while hub.count("commit") < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.kill()
    out1, err1 = first.communicate()
    assert [c.added for c in hub.commits] == [shards[:2]], err1[-3000:]
    puts_before_resume = list(hub.lfs_puts)
    # shard 3's blob went up before its commit hung: a resume must reuse it
    assert sorted(puts_before_resume) == sorted(sha256(expected[p]) for p in shards)

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr[-3000:]
    result = json.loads(second.stdout.strip().splitlines()[-1])
    assert result["uploaded"] == [shards[2], "README.md"] and result["unchanged"] == shards[:2]
    assert [c.added for c in hub.commits[1:]] == [[shards[2], "README.md"]]
    assert hub.lfs_puts == puts_before_resume, "a resumed push must not send any blob again"
    assert hub.files("me/demo", "v2") == {".gitattributes": GITATTRIBUTES, **expected}

    assert "commit 1/2: 2 operations" in err1 and "commit 1/1: 2 operations" in second.stderr
    assert "authorization: <TOKEN>" in err1, "HF_DEBUG curl logs should have been captured"
    for text in (out1, err1, second.stdout, second.stderr):
        assert TOKEN not in text
    for path in [*out.rglob("*"), *hf_home.rglob("*")]:
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


def test_second_push_deletes_stale_shards_and_an_identical_push_sends_nothing(tmp_path: Path, client: FakeHub) -> None:
    first = write_dataset(tmp_path, shards=3, seed=1)
    push_dataset(tmp_path, "me/demo", endpoint=client.url)
    expected = write_dataset(tmp_path, shards=2, seed=2)

    result = push_dataset(tmp_path, "me/demo", endpoint=client.url)
    assert client.files("me/demo") == {".gitattributes": GITATTRIBUTES, **expected}
    assert set(result.deleted) == {p for p in first if p.endswith(".parquet")} - set(expected)
    assert client.commits[-1].added[-1] == "README.md" and client.commits[-1].deleted == list(result.deleted)

    commits = len(client.commits)
    again = push_dataset(tmp_path, "me/demo", endpoint=client.url)
    assert (again.uploaded, again.deleted, again.commits) == ((), (), 0) and len(client.commits) == commits
    assert set(again.unchanged) == set(expected)


def test_private_push_into_an_existing_public_repo_is_refused(tmp_path: Path, client: FakeHub) -> None:
    write_dataset(tmp_path, shards=1)
    push_dataset(tmp_path, "me/demo", endpoint=client.url)
    write_dataset(tmp_path, shards=1, seed=5)
    with pytest.raises(PushError, match="already exists and is public"):
        push_dataset(tmp_path, "me/demo", private=True, endpoint=client.url)
    assert len(client.commits) == 1 and not client.repos["me/demo"].private


@pytest.mark.parametrize("make", ["nothing", "card_only"])
def test_missing_dataset_is_a_clear_error_before_any_request(tmp_path: Path, client: FakeHub, make: str) -> None:
    if make == "card_only":
        (tmp_path / "dataset" / "data").mkdir(parents=True)
        (tmp_path / "dataset" / "README.md").write_text(CARD)
    with pytest.raises(PushError, match="run `rephrase run` first"):
        push_dataset(tmp_path, "me/demo", endpoint=client.url)
    assert client.requests == []


def test_no_token_is_a_clear_error(tmp_path: Path, client: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dataset(tmp_path, shards=1)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    with pytest.raises(PushError, match="HF_TOKEN"):
        push_dataset(tmp_path, "me/demo", endpoint=client.url)
    assert client.requests == []


def _keep_only_run(tmp_path: Path, push: dict) -> object:
    from rephrase.config import load_config

    return load_config(
        REPO / "configs" / "demo.yaml",
        ["mix.synthetic_share=null", "routing.rules=[{action: keep}]"],
        {
            "input.sources": [{"path": "bundled:sample/wiki.jsonl", "limit": 8}],
            "run.output": str(tmp_path / "out"),
            "output.push": push,
        },
    )


def test_a_run_with_output_push_ends_with_its_dataset_on_the_hub(tmp_path: Path, client: FakeHub) -> None:
    from rephrase.run import run_config

    constants_endpoint = constants.ENDPOINT
    try:
        constants.ENDPOINT = client.url
        result = run_config(_keep_only_run(tmp_path, {"repo_id": "me/run", "revision": "v2"}))
    finally:
        constants.ENDPOINT = constants_endpoint
    local = {
        p.relative_to(result.layout.dataset).as_posix(): p.read_bytes()
        for p in result.layout.dataset.rglob("*")
        if p.is_file()
    }
    assert any(p.endswith(".parquet") for p in local) and "README.md" in local
    assert client.files("me/run", "v2") == {".gitattributes": GITATTRIBUTES, **local}


def test_a_failed_push_keeps_the_finished_run_and_says_how_to_resume(tmp_path: Path, client: FakeHub) -> None:
    from rephrase.run import run_config

    client.stop()
    constants_endpoint = constants.ENDPOINT
    try:
        constants.ENDPOINT = client.url
        with pytest.raises(RuntimeError, match=r"rephrase push .* --repo-id me/run") as err:
            run_config(_keep_only_run(tmp_path, {"repo_id": "me/run"}))
    finally:
        constants.ENDPOINT = constants_endpoint
    assert "is complete" in str(err.value) and TOKEN not in str(err.value)
    out = tmp_path / "out"
    assert (out / "stats.json").is_file() and any((out / "ledger").glob("*.parquet"))
    assert list((out / "dataset" / "data").glob("*.parquet"))


def test_output_push_without_a_token_fails_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rephrase.run import PreflightError, run_config

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(PreflightError, match=r"output\.push needs a Hub token"):
        run_config(_keep_only_run(tmp_path, {"repo_id": "me/run"}))
    assert not (tmp_path / "out" / "work").exists()


def test_streamed_shards_reach_the_hub_during_the_run_and_the_end_push_only_adds_the_card(
    tmp_path: Path, client: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """output.push.stream: datatrove's HuggingFaceDatasetWriter commits the shards from inside the finalize task
    (a 429 on that commit retried), then the end-of-run push finds them identical and commits the card alone."""
    import huggingface_hub.hf_api as hf_api

    from rephrase.run import run_config

    monkeypatch.setattr(constants, "ENDPOINT", client.url)
    monkeypatch.setattr(hf_api.api, "endpoint", client.url)  # datatrove calls the module-level create_commit
    client.fail("commit", 429)
    cfg = _keep_only_run(tmp_path, {"repo_id": "me/stream", "revision": "v3", "stream": True})
    cfg.output.shard_max_bytes = 2**20  # the smallest rotation; the sample fits one shard per split
    cfg.output.validation_share = 0.25
    result = run_config(cfg)

    commits = [r for r in client.seen("commit") if r.status == 200]
    assert [r.status for r in client.seen("commit")][:1] == [429], "the injected rate limit was not hit"
    assert len(commits) == 2, "one commit from the finalize task's writer, one for the card"
    local = {
        p.relative_to(result.layout.dataset).as_posix(): p.read_bytes()
        for p in result.layout.dataset.rglob("*")
        if p.is_file()
    }
    shards = sorted(p for p in local if p.endswith(".parquet"))
    assert any("train-" in p for p in shards) and any("validation-" in p for p in shards)
    assert f"pushed 1 files ({len(shards)} unchanged)" in capsys.readouterr().out
    assert client.files("me/stream", "v3") == {".gitattributes": GITATTRIBUTES, **local}
    log = "\n".join(str(r) for r in client.requests)
    assert TOKEN not in log and all(TOKEN.encode() not in data for data in local.values())
    from datasets import load_dataset

    loaded = load_dataset(str(result.layout.dataset))
    assert sum(len(split) for split in loaded.values()) == sum(result.stats["dataset"]["splits"].values())
    assert set(loaded) == set(result.stats["dataset"]["splits"]) == {"train", "validation"}


def test_streaming_to_an_unreachable_hub_fails_before_any_work(tmp_path: Path, client: FakeHub) -> None:
    from rephrase.run import PreflightError, run_config

    client.stop()
    constants_endpoint = constants.ENDPOINT
    try:
        constants.ENDPOINT = client.url
        with pytest.raises(PreflightError, match=r"output\.push\.stream: the Hub repo me/run cannot be prepared"):
            run_config(_keep_only_run(tmp_path, {"repo_id": "me/run", "stream": True}))
    finally:
        constants.ENDPOINT = constants_endpoint
    assert not (tmp_path / "out" / "work").exists()
