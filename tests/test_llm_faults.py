"""A model server that fails: 5xx answers, hung requests, a server that dies mid-run, a server that answers
garbage. Each run goes through the real pipeline and the real `vllm-server` engine (openai client, retries,
timeouts) against tests/fake_llm.py on 127.0.0.1; the outcome is compared with a run against a healthy server.
A server the pipeline spawned itself is restarted when it dies: test_engines.py kills a real vLLM server for that.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fake_llm import FakeLLM, run_updates

from rephrase.config import load_config
from rephrase.run import run_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, wiki_texts: list[str]) -> Path:
    folder = tmp_path_factory.mktemp("faults-in")
    english = [t for t in wiki_texts[:60] if t.isascii() and len(t) > 400][:8]
    for part in range(2):
        lines = [json.dumps({"id": f"p{part}-{i}", "text": t}) for i, t in enumerate(english[part::2])]
        (folder / f"part{part}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def run(url: str, inputs: Path, out: Path, **sets: object):
    updates = run_updates(
        url,
        **{
            "input.sources": [{"path": str(inputs / "*.jsonl")}],
            "run.output": str(out),
            "run.tasks": 2,
            "rephrase.llm.max_retries": 2,
            "rephrase.batch_size": 2,
            "mix.synthetic_share": None,
            "dedup.minhash.enabled": False,  # the fake's rewrites reorder sentences: MinHash would remove them
            **sets,
        },
    )
    return run_config(load_config(REPO / "configs" / "demo.yaml", [], updates))


def dataset(out: Path) -> list[tuple]:
    rows = pq.read_table(out / "dataset" / "data").to_pylist()
    return sorted((r["id"], r["kind"], r["text"]) for r in rows)


@pytest.fixture(scope="module")
def healthy(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple]:
    with FakeLLM() as llm:
        out = tmp_path_factory.mktemp("healthy")
        result = run(llm.url, inputs, out)
    assert result.stats["fates"] == {"rephrased": 8}
    return dataset(out)


def test_5xx_answers_are_retried_and_change_nothing(inputs: Path, tmp_path: Path, healthy: list[tuple]) -> None:
    with FakeLLM() as llm:
        llm.fail(503, 502)  # at most max_retries (2) failures for any one request
        run(llm.url, inputs, tmp_path / "out")
    assert [r.status for r in llm.requests[:2]] == [503, 502]
    assert dataset(tmp_path / "out") == healthy


def test_a_hung_request_times_out_and_is_retried(inputs: Path, tmp_path: Path, healthy: list[tuple]) -> None:
    with FakeLLM() as llm:
        llm.hang(1, seconds=8)
        result = run(llm.url, inputs, tmp_path / "out", **{"rephrase.llm.request_timeout_s": 2})
    (hung,) = llm.held  # answered after 8 s, to a client that had gone; the others did not wait for it
    assert [r.key for r in llm.requests].count(hung) >= 2
    assert result.stats["fates"] == {"rephrased": 8} and dataset(tmp_path / "out") == healthy


def test_a_server_dead_mid_task_leaves_llm_errors_that_the_next_run_retries(
    inputs: Path, tmp_path: Path, healthy: list[tuple]
) -> None:
    """One task: the server dies after 3 answers; the run still finishes, the documents it could not rewrite are
    kept as they were with `llm_error` in the ledger, and the next run (server back) asks only for those."""
    out, one_task = tmp_path / "out", {"run.tasks": 1, "rephrase.llm.request_timeout_s": 5}
    with FakeLLM(die_after=3) as llm:
        first = run(llm.url, inputs, out, **one_task)
        port = int(llm.url.rsplit(":", 1)[1].split("/")[0])
    errors = [r for r in first.read_ledger() if r["detail"] and "llm_error" in r["detail"]]
    assert errors and all(r["fate"] == "kept" and r["reason"] == "rephrase_failed" for r in errors), (
        first.read_ledger()
    )
    assert len(first.read_ledger()) == 8  # nothing lost
    with FakeLLM(port=port) as revived:
        second = run(revived.url, inputs, out, **one_task)
    assert second.stats["fates"] == {"rephrased": 8} and dataset(out) == healthy
    assert 0 < len(revived.requests) <= 2 * len(errors)  # only the failed documents (and their resamples)


def test_a_server_dead_when_a_task_starts_fails_the_run_clearly_and_keeps_finished_tasks(
    inputs: Path, tmp_path: Path, healthy: list[tuple]
) -> None:
    """Two tasks: task 0 loses the server mid-way (llm_error), task 1 cannot reach it at all. The run stops with
    a message naming the server and the way to resume; task 0's work stays; the rerun completes both."""
    from rephrase.executors import StageFailed

    out, timeout = tmp_path / "out", {"rephrase.llm.request_timeout_s": 5}
    with FakeLLM(die_after=3) as llm, pytest.raises(StageFailed, match=r"no OpenAI-compatible server .* to resume"):
        run(llm.url, inputs, out, **timeout)
    port = int(llm.url.rsplit(":", 1)[1].split("/")[0])
    assert sorted(p.name for p in (out / "logs" / "curate" / "completions").iterdir()) == ["00000"]
    with FakeLLM(port=port) as revived:
        second = run(revived.url, inputs, out, **timeout)
    assert second.stats["fates"] == {"rephrased": 8} and dataset(out) == healthy


def test_a_server_answering_garbage_is_stopped_by_the_validators(inputs: Path, tmp_path: Path) -> None:
    with FakeLLM(garbage=True) as llm:
        result = run(llm.url, inputs, tmp_path / "out")
    rows = pq.read_table(tmp_path / "out" / "dataset" / "data").to_pylist()
    assert rows and {r["kind"] for r in rows} == {"original"}
    assert {r["fate"] for r in result.read_ledger()} == {"kept"}
    assert all(r["reason"] == "rephrase_failed" and "meta_text" in r["detail"] for r in result.read_ledger())
    assert result.stats["llm"]["rejections"]["meta_text"] == result.stats["llm"]["candidates_generated"]
