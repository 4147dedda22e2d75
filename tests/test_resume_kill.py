"""SIGKILL the whole `rephrase run` process group at 10 points spread over a run, once as the post-curate stages
begin and once inside the parallel count/finalize/ledger stages, rerun the same command, and get exactly what an
uninterrupted run gives: the same dataset rows, the same ledger, and no finished generation asked for again.

The pipeline runs as a real subprocess (`python -m rephrase.cli run`), the way a preempted job dies: no atexit,
no finally. Its LLM is tests/fake_llm.py through the real `vllm-server` engine, so rewrites are a pure function
of the document and the comparison can be exact; the real model's engines are tested elsewhere. Kill times are
stratified over the uninterrupted run's wall time (seeded jitter), so they land in reading and filtering, in
generation, in the dedup and mix stages and while the ledger and card are written; two more kills wait for the
post-curate stages to begin (that window is a few seconds, and a slow start-up once let all ten clocks miss it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fake_llm import FakeLLM, doc_key, rewrite

REPO = Path(__file__).resolve().parent.parent
KILLS = 10
# the stages after curate, latest first, as their log folders are named: each runs as run.tasks (2) tasks
FINALIZE = ("ledger", "finalize", "count", "semantic", "minhash", "exact", "rows")
VALIDATORS = "[{use: not_truncated}, {use: not_empty}, {use: length_ratio}, {use: no_meta_text}]"


def write_inputs(folder: Path, rows: list[dict]) -> list[str]:
    """Three files, so the two curate tasks both have work (datatrove shards by file)."""
    folder.mkdir()
    texts = [r["text"] for r in rows if r["lang"] == "en"][:30]
    others = [r["text"] for r in rows if r["lang"] == "fr"][:3]
    for part in range(3):
        lines = [{"id": f"p{part}-{i}", "text": t} for i, t in enumerate(texts[part * 10 : part * 10 + 10])]
        lines.append({"id": f"p{part}-fr", "text": others[part]})
        lines.append({"id": f"p{part}-copy", "text": texts[part * 10]})  # exact duplicate: dedup drops it
        (folder / f"part{part}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return texts


def command(url: str, inputs: Path, out: Path) -> list[str]:
    sets = {
        "rephrase.llm.engine": "vllm-server",
        "rephrase.llm.server_url": url,
        "rephrase.llm.request_timeout_s": 20,
        "rephrase.validators": VALIDATORS,
        "rephrase.batch_size": 3,
        "rephrase.prefetch_docs": 0,
        "run.tasks": 2,
        "input.extract_html": "false",
    }
    args = [sys.executable, "-m", "rephrase.cli", "run", str(REPO / "configs" / "demo.yaml")]
    args += ["--input", str(inputs / "*.jsonl"), "--output", str(out)]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=REPO)


def finish(args: list[str], log: Path) -> None:
    process = start(args, log)
    if process.wait(timeout=600) != 0:
        pytest.fail(f"rephrase run failed ({process.returncode}):\n{log.read_text()[-3000:]}")


def result(out: Path) -> tuple[list[dict], list[dict]]:
    rows = pq.read_table(out / "dataset" / "data").to_pylist()
    ledger = pq.read_table(out / "ledger").to_pylist()
    key = lambda r: json.dumps(r, sort_keys=True, default=str)  # noqa: E731
    return sorted(rows, key=key), sorted(ledger, key=key)


def checkpointed(out: Path, by_text: dict[str, str]) -> set[str]:
    """Documents (fake_llm keys) whose finished generation is on disk in the LLM checkpoint."""
    keys = set()
    for f in (out / "work" / "llm_checkpoints").glob("*.jsonl"):
        for line in f.read_bytes().splitlines():
            try:
                outcome = json.loads(line)["outcome"]
            except ValueError:
                continue
            if "rewrite" in outcome:
                keys.add(by_text[outcome["rewrite"]["text"]])
    return keys


def stage_at_kill(out: Path) -> str:
    logs = out / "logs"
    if (out / "stats.json").exists():
        return "after stats (card)"
    for stage in (*FINALIZE, "curate"):
        if (logs / stage).exists():
            done = len(list((logs / stage).rglob("completions/*")))
            return f"{stage} ({done} tasks done)"
    return "start-up"


def kill_at(args: list[str], log: Path, out: Path, at: float) -> float:
    """SIGKILL the run `at` seconds in; a run faster than the baseline may end first: then earlier, from scratch."""
    while True:
        process = start(args, log)
        time.sleep(max(0.5, at))
        os.killpg(process.pid, signal.SIGKILL)
        if process.wait() == -signal.SIGKILL:
            return at
        assert process.returncode == 0, log.read_text()[-3000:]
        shutil.rmtree(out)
        at *= 0.8


def kill_as_stage_begins(args: list[str], log: Path, out: Path, stages: tuple[str, ...], delay: float) -> float:
    """SIGKILL `delay` seconds after the first of `stages` has begun (its log folder exists)."""
    process, began = start(args, log), time.perf_counter()
    while not any((out / "logs" / s).exists() for s in stages) and process.poll() is None:
        time.sleep(0.05)
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, (
        f"the run ended before a finalize stage began:\n{log.read_text()[-3000:]}"
    )
    return time.perf_counter() - began


@pytest.mark.slow
def test_sigkill_at_ten_points_then_resume_equals_uninterrupted_run(tmp_path: Path, sample_dir: Path) -> None:
    rows = [json.loads(x) for x in (sample_dir / "wiki.jsonl").read_text().splitlines() if x.strip()]
    texts = write_inputs(tmp_path / "in", rows)
    with FakeLLM(delay_s=0.4) as llm:
        by_text = {rewrite(t, temp, i): doc_key(t) for t in texts for temp in (0.7, 0.8) for i in range(2)}
        baseline = tmp_path / "baseline"
        began = time.perf_counter()
        finish(command(llm.url, tmp_path / "in", baseline), tmp_path / "baseline.log")
        wall = time.perf_counter() - began
        expected = result(baseline)
        baseline_requests = len(llm.requests)
        dataset, ledger = expected
        assert {r["kind"] for r in dataset} == {"original", "synthetic"}
        assert len(ledger) == 36 and {r["fate"] for r in ledger} == {"kept", "rephrased", "dropped"}

        rng = random.Random(0)
        report = []
        for kill in range(KILLS + 2):
            out = tmp_path / f"kill{kill}"
            args, log = command(llm.url, tmp_path / "in", out), tmp_path / f"kill{kill}.log"
            if kill < KILLS:
                at = kill_at(args, log, out, wall * (0.15 + 0.78 * kill / (KILLS - 1) + rng.uniform(-0.03, 0.03)))
            elif kill == KILLS:  # the post-curate stages last seconds: two kills wait for them instead of a clock
                at = kill_as_stage_begins(args, log, out, FINALIZE, 0.0)
            else:  # inside the parallel count / finalize / ledger stages, while their tasks run
                at = kill_as_stage_begins(args, log, out, ("count", "finalize", "ledger"), 1.0)
            killed_during = stage_at_kill(out)
            before = len(llm.requests)
            saved = checkpointed(out, by_text) if (out / "work" / "llm_checkpoints").exists() else set()
            finish(args, log)
            again = [r.key for r in llm.requests[before:]]
            report.append(f"kill {kill} at {at:5.1f} s ({killed_during}): {len(saved)} generations checkpointed, "
                          f"{len(again)} requests after resume")  # fmt: skip
            assert result(out) == expected, report[-1]
            assert not saved & set(again), f"{report[-1]}: finished generations were asked for again"
        print("\n".join([f"uninterrupted: {wall:.1f} s, {baseline_requests} requests", *report]))
        stages = " ".join(report)
        assert "curate" in stages and any(stage in stages for stage in FINALIZE)
