"""What a run prints at the end: the funnel, generation figures, two original -> rewrite pairs side by side, and
where the outputs are."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
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
        funnel.add_row(f"[bold]{fate}[/bold]", str(n))
    for reason, n in sorted(stats["drops"].items(), key=lambda kv: -kv[1]):
        funnel.add_row(f"  dropped at {reason}", str(n))
    console.print(funnel)

    stages = Table(title="Per-stage counts (datatrove stats)")
    for col in ("stage", "counts", "wall s"):
        stages.add_column(col)
    for group in ("curate", "finalize"):
        for name, counters in stats["stages"][group].items():
            shown = {k: v for k, v in counters.items() if k != "wall_time_s" and not k.startswith("doc_len")}
            text = ", ".join(f"{k}={v}" for k, v in list(shown.items())[:10])
            stages.add_row(f"{group}/{name}", text, str(counters.get("wall_time_s", "")))
    console.print(stages)

    llm = stats["llm"]
    console.print(
        f"LLM ({llm['engine']}, {llm['model']}): {llm['requests']} requests, "
        f"{llm['candidates_generated']} candidates, "
        f"{llm['candidates_accepted']} accepted; tokens in {llm['tokens_in']}, out {llm['tokens_out']}; "
        f"rejections {llm['rejections']}"
    )
    for by in ("by_prompt", "by_bucket"):
        if llm.get(by):
            shown = ", ".join(
                f"{k} {v['accepted']}/{v['attempted']} ({v['acceptance']:.0%})" for k, v in llm[by].items()
            )
            console.print(f"  documents accepted {by.replace('_', ' ')}: {shown}")
    if llm.get("checked"):
        failed = llm.get("failed_by", {})
        shown = ", ".join(f"{k} {n - failed.get(k, 0)}/{n}" for k, n in sorted(llm["checked"].items()))
        console.print(f"  candidates passing each validator: {shown}")
    ds = stats["dataset"]
    console.print(
        f"Dataset: {ds['rows']} rows, tokens {ds['tokens']}, synthetic share {ds['synthetic_token_share']:.3f} "
        f"(target {ds['target_synthetic_share']})"
    )

    table = pq.read_table(layout.dataset / "data").to_pylist()
    by_id = {r["id"]: r for r in table if r["kind"] == "original"}
    shown = 0
    for row in table:
        if row["kind"] != "synthetic" or shown >= pairs:
            continue
        source = by_id.get(row["source_id"])
        original = source["text"] if source else _original_text(layout, row["source_id"])
        side = Table(title=f"{row['source_id']} -> {row['prompt']}", show_lines=True, expand=True)
        side.add_column("original")
        side.add_column("rewrite")
        side.add_row(_clip(original), _clip(row["text"]))
        console.print(side)
        shown += 1
    console.print(f"dataset: {layout.dataset}\nledger:  {layout.ledger_file}\nstats:   {layout.stats_file}")


def _original_text(layout, doc_id: str) -> str:
    for f in sorted((layout.work / "docs").glob("*.parquet")):
        for row in pq.read_table(f, columns=["id", "text"]).to_pylist():
            if row["id"] == doc_id:
                return row["text"]
    return "(original not found)"


def print_submitted(result: Submitted) -> None:
    """A Slurm run returns once its jobs are queued; say what was queued and where the outputs will appear."""
    layout = result.layout
    print(f"rephrase: submitted Slurm jobs {', '.join(result.job_ids)} (one per stage, each after the one before)")
    print(f"  follow: squeue --me; task logs under {layout.logs}/<stage>/logs and {layout.logs}/<stage>/slurm")
    print(f"  the last job writes {layout.dataset}, {layout.ledger_file} and {layout.stats_file}")
    print("  a stage that fails stops the jobs after it: rerun the same command to resume (finished tasks are kept)")
