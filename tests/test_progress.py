"""Progress of the LLM stage where no terminal watches (a Slurm job log, nohup, CI): a plain line per interval."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from fake_llm import FakeLLM, run_updates

from rephrase.config import load_config
from rephrase.llm.progress import StageProgress, Totals
from rephrase.run import run_config

REPO = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_line_per_interval_with_rates_and_eta() -> None:
    clock, lines, totals = Clock(), [], Totals()
    progress = StageProgress(3, total=40, interval_s=60, totals=totals, clock=clock, log=lines.append)
    assert progress.bar.disable  # no terminal under pytest: the bar draws nothing, the log lines are the progress
    clock.now += 30
    totals.input_tokens, totals.output_tokens = 900, 1200
    progress.tick()
    assert lines == []  # not yet due
    clock.now += 31  # 61 s in: generations came back but no document is finished yet
    progress.tick()
    assert lines[-1] == (
        "rephrase [task 3]: 0/40 documents, 0/0 rewrites accepted, tokens in 900 out 1200, 19.7 out tok/s over the "
        "last 1m01s (19.7 overall), 1m01s elapsed, ETA unknown (nothing done yet)"
    )
    clock.now += 60
    totals.accepted, totals.attempted, totals.output_tokens = 9, 10, 2400
    progress.update(10, totals)  # a quarter of the documents in 121 s: 363 s to go
    assert lines[-1].startswith("rephrase [task 3]: 10/40 documents, 9/10 rewrites accepted, tokens in 900 out 2400")
    assert "20.0 out tok/s over the last 1m00s (19.8 overall), 2m01s elapsed, ETA 6m03s" in lines[-1]
    progress.update(0, totals)
    assert len(lines) == 3 - 1  # the next line waits for the next interval
    assert progress.close() == lines[-1] and "10 documents, 9/10 rewrites accepted (90.0%)" in lines[-1]


@dataclass
class Reader:
    records_read: int = 0
    records_total: int | None = None


def test_without_a_document_count_the_eta_comes_from_the_input_records_read() -> None:
    """Documents reach the stage through filters, so it cannot know how many will; its reader knows how far it is
    through the task's input once it has counted it."""
    clock, lines, totals, reader = Clock(), [], Totals(), Reader()
    progress = StageProgress(0, None, interval_s=60, totals=totals, clock=clock, log=lines.append, source=reader)
    clock.now += 60
    reader.records_read = 30
    progress.update(5, totals)
    assert lines[-1].startswith("rephrase [task 0]: 5 documents, 0/0 rewrites accepted")
    assert lines[-1].endswith("ETA unknown (input not counted)")
    reader.records_total = 120
    clock.now += 60
    reader.records_read = 40  # a third of the input in 120 s: 240 s to go
    progress.update(5, totals)
    assert lines[-1].startswith("rephrase [task 0]: 10 documents (input 40/120 records read), 0/0 rewrites")
    assert lines[-1].endswith("2m00s elapsed, ETA 4m00s")
    clock.now += 60
    reader.records_read = 120  # read to the end: the prefetch buffer and the engine still hold documents
    progress.update(5, totals)
    assert lines[-1].endswith("ETA soon (input all read; its last documents are generating)")


def test_a_run_without_terminal_logs_progress_to_the_task_log(wiki_texts: list[str], tmp_path: Path) -> None:
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(wiki_texts[:12])))
    with FakeLLM() as llm:
        updates = run_updates(llm.url, **{"input.sources": [{"path": str(inputs)}], "run.output": str(tmp_path / "o")})
        sets = ["language.enabled=false", "heuristics=[]", "run.progress_interval_s=0.001", "rephrase.batch_size=4"]
        result = run_config(load_config(REPO / "configs" / "demo.yaml", sets, updates))
    log = (result.layout.logs / "curate" / "logs" / "task_00000.log").read_text()
    read = r"(?: \(input \d+/\d+ records read\))?"
    head = rf"rephrase \[task 0\]: \d+ documents{read}, \d+/\d+ rewrites accepted"
    lines = re.findall(head + r", tokens in \d+ out .*", log)
    assert len(lines) >= 2 and all("ETA" in line for line in lines)
    assert "(input " in lines[-1] and "/12 records read)" in lines[-1]  # counted beside the reading: the ETA's base
    assert "ETA unknown" not in lines[-1]
    done = [int(re.search(r": (\d+) documents", line).group(1)) for line in lines]
    assert done == sorted(done) and done[-1] > 0
