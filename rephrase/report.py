"""What a run prints at the end: the funnel, generation figures, two original -> rewrite pairs side by side, and
where the outputs are. Figures come from stats.json; of the dataset it reads only the rows it shows. Everything
that comes from the data (texts, ids, reasons) is escaped before rich renders it: a forum post's `[/quote]` is
text, not markup."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from rephrase.layout import Layout
    from rephrase.run import RunResult, Submitted


def _clip(text: str, n: int = 700) -> str:
    return text if len(text) <= n else text[:n].rstrip() + " [...]"


def print_summary(result: RunResult, pairs: int = 2) -> None:
    console = Console()
    stats, layout = result.stats, result.layout
    funnel = Table(title="Input records", show_header=True)
    funnel.add_column("fate / stage / reason")
    funnel.add_column("records", justify="right")
    for fate, n in stats["fates"].items():
        funnel.add_row(f"[bold]{escape(fate)}[/bold]", str(n))
    for reason, n in sorted(stats["drops"].items(), key=lambda kv: -kv[1]):
        funnel.add_row(f"  dropped at {escape(reason)}", str(n))
    console.print(funnel)

    stages = Table(title="Per-stage counts (datatrove stats)")
    for col in ("stage", "counts", "wall s"):
        stages.add_column(col)
    for group in ("curate", "finalize"):
        for name, counters in stats["stages"][group].items():
            shown = {k: v for k, v in counters.items() if k != "wall_time_s" and not k.startswith("doc_len")}
            text = ", ".join(f"{k}={v}" for k, v in list(shown.items())[:10])
            stages.add_row(escape(f"{group}/{name}"), escape(text), str(counters.get("wall_time_s", "")))
    console.print(stages)

    llm = stats["llm"]
    console.print(
        escape(
            f"LLM ({llm['engine']}, {llm['model']}): {llm['requests']} requests, "
            f"{llm['candidates_generated']} candidates, "
            f"{llm['candidates_accepted']} accepted; tokens in {llm['tokens_in']}, out {llm['tokens_out']}; "
            f"rejections {llm['rejections']}"
        )
    )
    for by in ("by_prompt", "by_bucket"):
        if llm.get(by):
            shown = ", ".join(
                f"{k} {v['accepted']}/{v['attempted']} ({v['acceptance']:.0%})" for k, v in llm[by].items()
            )
            console.print(escape(f"  documents accepted {by.replace('_', ' ')}: {shown}"))
    if llm.get("checked"):
        failed = llm.get("failed_by", {})
        shown = ", ".join(f"{k} {n - failed.get(k, 0)}/{n}" for k, n in sorted(llm["checked"].items()))
        console.print(escape(f"  candidates passing each validator: {shown}"))
    data = stats["dataset"]
    console.print(
        escape(
            f"Dataset: {data['rows']} rows, tokens {data['tokens']}, synthetic share "
            f"{data['synthetic_token_share']:.3f} (target {data['target_synthetic_share']})"
        )
    )
    for row, original in shown_pairs(layout, pairs):
        side = Table(title=escape(f"{row['source_id']} -> {row['prompt']}"), show_lines=True, expand=True)
        side.add_column("original")
        side.add_column("rewrite")
        side.add_row(escape(_clip(original)), escape(_clip(row["text"])))
        console.print(side)
    console.print(escape(f"dataset: {layout.dataset}\nledger:  {layout.ledger}\nstats:   {layout.stats_file}"))


def shown_pairs(layout: Layout, n: int) -> list[tuple[dict, str]]:
    """The dataset's first n rewrites and their originals, found by input record (unique, unlike input ids): from
    the dataset, or from work/docs when the mix left the original out. Streams; holds only the rows shown."""
    if not any(layout.dataset_data.rglob("*.parquet")):
        return []
    data = ds.dataset(layout.dataset_data, format="parquet")
    picked: list[dict] = []
    columns = ["text", "source_id", "source_record", "prompt"]
    for batch in data.to_batches(columns=columns, filter=ds.field("kind") == "synthetic", batch_size=64):
        picked += batch.to_pylist()[: n - len(picked)]
        if len(picked) >= n:
            break
    records = [p["source_record"] for p in picked]
    wanted = (ds.field("kind") == "original") & ds.field("source_record").isin(records)
    originals = {r["source_record"]: r["text"] for r in data.to_table(["source_record", "text"], wanted).to_pylist()}
    for record in set(records) - set(originals):
        originals[record] = _original_text(layout, record)
    return [(p, originals[p["source_record"]]) for p in picked]


def _original_text(layout: Layout, record: str) -> str:
    needle = f'"record": {json.dumps(record, ensure_ascii=False)}'
    for f in sorted(layout.docs.glob("*.parquet")):
        with pq.ParquetFile(f) as pf:
            for batch in pf.iter_batches(columns=["text", "meta"], batch_size=1000):
                hits = pc.match_substring(batch.column("meta"), needle).to_pylist()
                for i in (i for i, hit in enumerate(hits) if hit):
                    return batch.column("text")[i].as_py()
    return "(original not found)"


def print_submitted(result: Submitted) -> None:
    """A Slurm run returns once its jobs are queued; say what was queued and where the outputs will appear."""
    layout = result.layout
    print(f"rephrase: submitted Slurm jobs {', '.join(result.job_ids)} (one per stage, each after the one before)")
    print(f"  follow: squeue --me; task logs under {layout.logs}/<stage>/logs and {layout.logs}/<stage>/slurm")
    print(f"  the last job writes {layout.dataset}, {layout.ledger} and {layout.stats_file}")
    print("  a stage that fails stops the jobs after it: rerun the same command to resume (finished tasks are kept)")
