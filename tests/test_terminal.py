"""What `rephrase run` prints: a status line and the summary, the engine and datatrove logs in OUT/logs/run.log
(all of them with -v), and an error with the log to read. Real runs as subprocesses (the redirection is of file
descriptors, so it reaches the stage workers), rewriting through tests/fake_llm.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_llm import VALIDATORS, FakeLLM

from rephrase.llm.progress import StageProgress, Totals
from rephrase.llm.server import free_port
from rephrase.terminal import status_line

REPO = Path(__file__).resolve().parent.parent
DATATROVE_LINE = "Launching pipeline for rank=0"  # datatrove's first log line in every task


def test_the_status_line_names_the_running_stage_and_sums_the_llm_tasks(tmp_path: Path) -> None:
    logs, progress = tmp_path / "logs", tmp_path / "progress"
    for stage, world, done in (("curate", 2, 1), ("rows", 4, 0)):
        (logs / stage / "completions").mkdir(parents=True)
        (logs / stage / "executor.json").write_text(json.dumps({"world_size": world}))
        for rank in range(done):
            (logs / stage / "completions" / f"{rank:05d}").touch()
    os.utime(logs / "rows" / "executor.json", (1, 1))  # started before curate: curate is the one running
    now = [0.0]
    for rank, (docs, accepted, out_tokens) in enumerate(((10, 4, 1200), (20, 8, 1800))):
        task = StageProgress(rank, 50, 60.0, Totals(), clock=lambda: now[0], log=lambda line: None,
                             status_path=progress / f"{rank:05d}.json")  # fmt: skip
        now[0] = 60.0
        task.update(docs, Totals(accepted=accepted, attempted=docs, output_tokens=out_tokens))
    line = status_line(logs, progress, elapsed_s=75)
    # 30 of 100 documents in 60 s: 70 more take 140 s; 3000 output tokens in 60 s
    expected = "stage curate: 1/2 tasks done · rephrase 30/100 documents, 12/30 rewrites accepted, 50 out tok/s"
    assert line == expected + ", ETA 2m20s · 1m15s elapsed"


def test_without_document_counts_the_status_line_takes_its_eta_from_the_input_read(tmp_path: Path) -> None:
    progress, now = tmp_path / "progress", [0.0]
    for rank, (docs, read, records) in enumerate(((6, 25, 100), (4, 15, 60))):
        reader = type("Reader", (), {"records_read": read, "records_total": records})()
        task = StageProgress(rank, None, 60.0, Totals(), clock=lambda: now[0], log=lambda line: None,
                             status_path=progress / f"{rank:05d}.json", source=reader)  # fmt: skip
        now[0] = 40.0
        task.update(docs, Totals(accepted=docs, attempted=docs, output_tokens=400))
    line = status_line(tmp_path / "logs", progress, elapsed_s=50)
    # 40 of 160 input records in 40 s: 120 more take 120 s
    assert line == (
        "rephrase 10 documents (input 40/160 records read), 10/10 rewrites accepted, 20 out tok/s, ETA 2m00s"
        " · 50s elapsed"
    )


def run_args(url: str, inputs: Path, out: Path, *more: str) -> list[str]:
    sets = {
        "rephrase.llm.engine": "vllm-server",
        "rephrase.llm.server_url": url,
        "rephrase.llm.max_retries": 0,
        "rephrase.llm.request_timeout_s": 10,
        "rephrase.validators": json.dumps(VALIDATORS),
        "input.extract_html": "false",
        "run.progress_interval_s": 0.2,
    }
    args = [sys.executable, "-m", "rephrase.cli", "run", str(REPO / "configs" / "demo.yaml")]
    args += ["--input", str(inputs), "--output", str(out), *more]
    return args + [f"--set={key}={value}" for key, value in sets.items()]


@pytest.fixture
def leads(tmp_path: Path, sample_dir: Path) -> Path:
    rows = [json.loads(x) for x in (sample_dir / "wiki.jsonl").read_text().splitlines() if x.strip()][:8]
    path = tmp_path / "leads.jsonl"
    path.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in rows))
    return path


def rephrase_run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def test_a_run_prints_its_status_and_summary_and_logs_the_rest(tmp_path: Path, leads: Path) -> None:
    with FakeLLM() as llm:
        quiet = rephrase_run(run_args(llm.url, leads, tmp_path / "quiet", "--set=run.tasks=2"))
        verbose = rephrase_run(run_args(llm.url, leads, tmp_path / "verbose", "-v"))
    assert quiet.returncode == 0, quiet.stdout[-3000:] + quiet.stderr[-3000:]
    assert "Input records" in quiet.stdout  # the summary
    assert "stage curate: " in quiet.stdout and "documents" in quiet.stdout  # the status lines (not a terminal)
    assert DATATROVE_LINE not in quiet.stdout + quiet.stderr
    assert DATATROVE_LINE in (tmp_path / "quiet" / "logs" / "run.log").read_text()
    idle = "only 1 task(s) get documents"  # one input file for two tasks: a warning on the terminal and in the log
    assert idle in quiet.stdout and idle in (tmp_path / "quiet" / "logs" / "run.log").read_text()
    assert verbose.returncode == 0 and "Input records" in verbose.stdout
    assert DATATROVE_LINE in verbose.stderr and not (tmp_path / "verbose" / "logs" / "run.log").exists()


def test_a_failed_run_names_its_log_on_the_terminal(tmp_path: Path, leads: Path) -> None:
    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    run = rephrase_run(run_args(dead, leads, tmp_path / "out"))
    log = tmp_path / "out" / "logs" / "run.log"
    assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]
    assert "rephrase: error: stage curate failed" in run.stderr
    assert f"everything the run printed is in {log}" in run.stderr
    assert DATATROVE_LINE in log.read_text() and DATATROVE_LINE not in run.stderr
