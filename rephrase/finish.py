"""The end of a run, after the last stage: ledger check, stats.json, the dataset card and the optional push.

Local and Ray runs call `finish_run` in-process; on Slurm it is the last job (`FinishRun`), since the submitting
process has long returned. Everything here reads tallies and per-stage stats, not the dataset or the ledger, so
it takes the same few seconds at any corpus size.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from rephrase.card import write_card
from rephrase.config import Config
from rephrase.executors import merge_task_stats
from rephrase.layout import Layout
from rephrase.ledger import check_complete, ensure_loadable
from rephrase.rows import write_empty_dataset
from rephrase.stats import records_read, summarize

_SHARD = re.compile(r"^(?:(\d+)_)?(train|validation)-(\d+)\.parquet$")  # datatrove's rotation counter, split, rank


@dataclass
class RunResult:
    layout: Layout
    stats: dict

    def read_ledger(self) -> list[dict]:
        """The whole ledger as rows: for tests and small runs (a large run's ledger is read shard by shard)."""
        return pq.read_table(self.layout.ledger).to_pylist()


def name_shards(folder: Path) -> None:
    """Hub naming per split and folder (one folder per curriculum stage): train-00000-of-00003.parquet, in
    (rank, rotation) order, so a reader that takes files in name order reads each task's rows in the order written."""
    groups: defaultdict[tuple[Path, str], list[tuple[int, int, Path]]] = defaultdict(list)
    for f in folder.rglob("*.parquet"):
        if m := _SHARD.match(f.name):
            groups[(f.parent, m.group(2))].append((int(m.group(3)), int(m.group(1) or 0), f))
    for (parent, split), files in groups.items():
        for i, (*_, f) in enumerate(sorted(files)):
            f.rename(parent / f"{split}-{i:05d}-of-{len(files):05d}.parquet")


def finish_run(cfg: Config, layout: Layout, timings: dict[str, float]) -> RunResult:
    """Ledger check, stats.json, card and push, from what the stages wrote."""
    start = time.perf_counter()
    for stats_dir in {p.parent.parent for p in layout.logs.glob("**/stats/*.json")}:
        merge_task_stats(stats_dir)  # Slurm merges in jobs of its own that may not have run yet
    if not any(layout.dataset_data.rglob("*.parquet")):  # every record was dropped before the dataset
        write_empty_dataset(layout.dataset_data)
    if cfg.output.push is None or not cfg.output.push.stream:  # streamed shards keep the names the Hub has
        name_shards(layout.dataset_data)
    ensure_loadable(layout.ledger)
    stats = summarize(cfg, layout, {**timings, "finish": round(time.perf_counter() - start, 2)})
    check_complete(stats["records"], records_read(layout))
    layout.stats_file.write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    write_card(cfg, layout, stats)
    if cfg.output.push is not None:
        push_finished(cfg, layout)
    return RunResult(layout, stats)


class FinishRun(PipelineStep):
    """The end of a run as a job of its own (Slurm): ledger check, stats.json, card and push, after finalize."""

    name, type = "finish", "📋 - FINISH"

    def __init__(self, cfg: Config, layout: Layout) -> None:
        super().__init__()
        self.cfg, self.layout = cfg, layout

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        finish_run(self.cfg, self.layout, {})
        yield from ()


def push_finished(cfg: Config, layout: Layout) -> None:
    """The same push as `rephrase push`, after everything is written locally: a Hub failure loses nothing, and
    the message says how to resume it."""
    from rephrase.hub import push_dataset

    target = cfg.output.push
    try:
        result = push_dataset(layout.out, target.repo_id, private=target.private, revision=target.revision)
    except Exception as e:
        raise RuntimeError(
            f"the run finished and {layout.dataset} is complete, but pushing it failed: {e}. Resume the upload with "
            f"`rephrase push {layout.out} --repo-id {target.repo_id}`"
            + (f" --revision {target.revision}" if target.revision else "")
            + (" --private" if target.private else "")
        ) from e
    print(f"rephrase: pushed {len(result.uploaded)} files ({len(result.unchanged)} unchanged) to {result.url}")
