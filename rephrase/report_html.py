"""`rephrase report OUT`: one self-contained HTML page (`OUT/report.html`) showing what a finished run did.

It reads only what a run leaves behind (stats.json, the ledger, work/docs and datatrove's task logs), so a report
can be made for any finished run, later and elsewhere. It streams them: counts are over every record, while the
charts and the shown pairs use an evenly spaced sample of at most SAMPLE records and documents, so a report over
millions of records costs the memory of a few thousand. Charts are inline SVG whose geometry is computed here
(pixels in Python) and emitted by the Jinja template with autoescape on: no script and no CDN, so the page opens
offline and prints or screenshots the same everywhere.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime
from importlib.resources import files
from pathlib import Path

import jinja2
import pyarrow.parquet as pq

from rephrase.report_charts import COLORS, histogram, scatter, timeline

PAIRS = 20
SAMPLE = 20_000
# Where a stage sits in the funnel; heuristics (named by their config `use`) take the "*" slot.
STAGE_ORDER = ("input", "language", "*", "dedup", "route", "rephrase", "final dedup", "near_dedup", "mix")
_SYMBOLS = re.compile(r"[^\w\s:./()-]")  # datatrove's emoji step icons: fonts without them draw boxes
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \|", re.MULTILINE)  # loguru's line prefix


def _total(v: dict | float | None) -> float:
    return (v.get("total", 0) if isinstance(v, dict) else v) or 0


def _tasks(out: Path) -> list[dict]:
    """Wall-clock spans from the timestamps of datatrove's task logs: one per curate task (with its LLM output
    throughput) and one per later stage (rows, minhash/*, finalize), whose many short tasks say little one by one."""
    spans, later = [], defaultdict(list)
    for log in (out / "logs").glob("**/logs/task_*.log"):
        if not (stamps := _LOG_TIME.findall(log.read_text(errors="replace"))):
            continue
        stage_dir, rank = log.parent.parent, int(log.stem.removeprefix("task_"))
        start, end = datetime.fromisoformat(stamps[0]), datetime.fromisoformat(stamps[-1])
        stage = stage_dir.relative_to(out / "logs").as_posix()
        if stage != "curate":
            later[stage].append((start, end))
            continue
        stats_file = stage_dir / "stats" / f"{rank:05d}.json"
        steps = json.loads(stats_file.read_text()) if stats_file.is_file() else []  # absent while a task runs
        llm = next((s["stats"] for s in steps if s["name"].endswith("rephrase")), {})
        note = f"{(end - start).total_seconds():.1f} s"
        if secs := _total(llm.get("generate_seconds")):
            note += f" · {_total(llm.get('output_tokens')) / secs:,.0f} out tok/s"
        spans.append({"stage": stage, "label": f"curate task {rank}", "start": start, "end": end, "note": note})
    for stage, times in later.items():
        start, end = min(t[0] for t in times), max(t[1] for t in times)
        note = f"{len(times)} task{'s' * (len(times) > 1)} · {(end - start).total_seconds():.1f} s"
        spans.append({"stage": stage, "label": stage, "start": start, "end": end, "note": note})
    return sorted(spans, key=lambda t: (t["start"], t["label"]))


def _rows(folder: Path, columns: list[str]) -> Iterator[dict]:
    for f in sorted(folder.glob("*.parquet")):
        with pq.ParquetFile(f) as pf:
            for batch in pf.iter_batches(columns=columns, batch_size=10_000):
                yield from batch.to_pylist()


def _every(total: int) -> int:
    """Stride that keeps at most SAMPLE of `total` items."""
    return max(1, math.ceil(total / SAMPLE))


def _read_ledger(folder: Path) -> tuple[int, Counter, dict[str, list[float]]]:
    """Records, drops per (stage, reason) and sampled quality scores per routing action, in one streamed pass."""

    def stage_of(row: dict) -> str:  # the ledger names both dedups `dedup`; only the final one's rows have an action
        return "final dedup" if row["stage"] == "dedup" and row["action"] else row["stage"]

    total = sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("*.parquet"))
    stride, records, drops, scored = _every(total), 0, Counter(), defaultdict(list)
    for row in _rows(folder, ["fate", "stage", "reason", "action", "quality_score"]):
        if row["fate"] == "dropped":
            drops[(stage_of(row), row["reason"])] += 1
        if row["quality_score"] is not None and records % stride == 0:
            scored[row["action"] or "none"].append(row["quality_score"])
        records += 1
    return records, drops, scored


def _funnel(records: int, drops: Counter) -> tuple[list[dict], list[dict]]:
    """Records left after each stage that dropped any, and drops per (stage, reason), in pipeline order."""

    def order(stage: str) -> int:
        return STAGE_ORDER.index(stage if stage in STAGE_ORDER else "*")

    by_stage: Counter = Counter()
    for (stage, _), n in drops.items():
        by_stage[stage] += n
    funnel, left = [{"stage": "records read", "dropped": 0, "left": records}], records
    for stage in sorted(by_stage, key=order):
        left -= by_stage[stage]
        funnel.append({"stage": f"after {stage}", "dropped": by_stage[stage], "left": left})
    ordered = sorted(drops.items(), key=lambda d: (order(d[0][0]), -d[1]))
    return funnel, [{"stage": s, "reason": r, "n": n} for (s, r), n in ordered]


def _scores(raw: str | None) -> dict[str, float]:
    """A rewrite's validator scores; for a chunked rewrite the lowest chunk score, the one that bound."""
    parsed = json.loads(raw) if raw else {}
    if isinstance(parsed, list):
        return {k: min(p[k] for p in parsed if k in p) for k in {k for p in parsed for k in p}}
    return parsed


def _summary(values: list[float]) -> dict:
    q = sorted(values)
    if not q:
        return {"n": 0}
    return {
        "n": len(q),
        "min": q[0],
        "median": statistics.median(q),
        "mean": statistics.fmean(q),
        "p90": q[int(0.9 * (len(q) - 1))],
        "max": q[-1],
    }


def _quality(scored: dict[str, list[float]], docs: list[dict]) -> dict:
    """Scores by routing action; one histogram per classifier when several scored (from documents that reached the
    LLM stage: the ledger keeps only the mean score of dropped ones)."""
    names = sorted(
        {k for d in docs for k in d["meta"] if k.startswith("quality_") and not k.endswith("_pct")}
        - {"quality_score", "quality_bucket"}
    )
    per = {n: [d["meta"][n] for d in docs if n in d["meta"]] for n in names} if len(names) > 1 else {}
    return {
        "quality": histogram(dict(sorted(scored.items())), COLORS, "quality score", True, (0, 1)),
        "by_action": [(action, _summary(v)) for action, v in sorted(scored.items())],
        "classifiers": [n.removeprefix("quality_") for n in names],
        "per_classifier": [
            (n.removeprefix("quality_"), histogram({n: v}, {n: COLORS["keep"]}, n, True, (0, 1)))
            for n, v in per.items()
        ],
    }


def _read_docs(folder: Path) -> tuple[list[dict], dict, int]:
    """A streamed pass over work/docs: an evenly spaced sample of at most SAMPLE documents (with their text, for
    the charts and pairs), the per-prompt outcome counts of all of them, and how many rewrites there are."""
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("*.parquet"))
    stride, sample, n_pairs = _every(total), [], 0
    prompts = defaultdict(lambda: {"accepted": 0, "failed": 0, "attempts": 0, "reasons": Counter()})
    for i, row in enumerate(_rows(folder, ["id", "text", "meta"])):
        meta = json.loads(row["meta"])
        for rw in meta.get("rewrites", []):
            n_pairs += 1
            prompts[rw["prompt"]]["accepted"] += 1
            prompts[rw["prompt"]]["attempts"] += rw.get("attempts", 1)
        for fail in meta.get("rephrase_failures", []):
            prompts[fail["prompt"]]["failed"] += 1
            prompts[fail["prompt"]]["reasons"].update(fail["reason"].split(","))
        if i % stride == 0:
            sample.append({**row, "meta": meta})
    return sample, prompts, n_pairs


def _generation(docs: list[dict], prompts: dict, n_pairs: int, llm: dict) -> dict:
    """Per-prompt outcomes, validator checks and rejections, length charts and the shown original/rewrite pairs."""
    pairs, scores = [], defaultdict(list)
    for d in docs:
        for rw in d["meta"].get("rewrites", []):
            pair = {"id": d["id"], "original": d["text"], "tokens_in": d["meta"].get("n_tokens"), "rw": rw}
            pairs.append(pair | {"scores": _scores(rw.get("validators"))})
            for name, score in pairs[-1]["scores"].items():
                scores[name].append(score)
    originals = [d["meta"]["n_tokens"] for d in docs if d["meta"].get("action") == "rephrase"]
    rewrites = [p["rw"]["output_tokens"] for p in pairs]
    lengths = {"originals routed to rephrase": originals, "accepted rewrites": rewrites}
    colors = dict(zip(lengths, (COLORS["keep"], COLORS["rephrase"]), strict=True))
    cap = next((json.loads(p["rw"]["sampling"]).get("max_tokens") for p in pairs if p["rw"].get("sampling")), None)
    checked, failed_by = llm.get("checked", {}), llm.get("failed_by", {})
    step = max(1.0, len(pairs) / PAIRS)
    return {
        "pairs": [pairs[int(i * step)] for i in range(min(PAIRS, len(pairs)))],
        "n_pairs": n_pairs,
        "prompts": [
            {"name": k, **v, "attempts": v["attempts"] / v["accepted"] if v["accepted"] else None}
            for k, v in sorted(prompts.items())
        ],
        "validators": [
            {
                "name": k,
                "checked": checked.get(k),
                "failed": failed_by.get(k, 0) if k in checked else None,
                "median": statistics.median(scores[k]) if scores[k] else None,
            }
            for k in sorted(set(checked) | set(scores))
        ],
        "rejections": sorted(llm.get("rejections", {}).items(), key=lambda kv: -kv[1]),
        "lengths": histogram(lengths, colors, "tokens (model tokenizer)", stacked=False),
        "len_summary": {"originals": _summary(originals), "rewrites": _summary(rewrites)},
        "ratio": scatter(
            [(p["tokens_in"], p["rw"]["output_tokens"]) for p in pairs if p["rw"].get("chunks", 1) == 1],
            ("original tokens", "rewrite tokens"),
            cap,
        ),
    }


def collect(out: Path) -> dict:
    """Everything the template shows, as plain data."""
    stats = json.loads((out / "stats.json").read_text())
    records, drop_counts, scored = _read_ledger(out / "ledger")
    docs, prompts, n_pairs = _read_docs(out / "work" / "docs")
    funnel, drops = _funnel(records, drop_counts)
    llm = stats["llm"]
    rephrase = next((v for k, v in stats["stages"]["curate"].items() if k.endswith("rephrase")), {})
    return {
        "stats": stats,
        "llm": llm,
        "colors": COLORS,
        "out": str(out),
        "generated": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "records": records,
        "funnel": funnel,
        "drops": drops,
        **_quality(scored, docs),
        "gen_s": rephrase.get("generate_seconds", 0),
        "tasks": timeline(_tasks(out)),
        "steps": [
            (group, _SYMBOLS.sub("", name).strip(), counters.get("wall_time_s", 0))
            for group, steps in stats["stages"].items()
            for name, counters in steps.items()
        ],
        **_generation(docs, prompts, n_pairs, llm),
        "by_bucket": sorted(llm.get("by_bucket", {}).items(), key=lambda kv: (len(kv[0]), kv[0])),
    }


def write_report(out: Path) -> Path:
    """Render `out/report.html` from a finished run's folder and return its path."""
    out = Path(out)
    if not (out / "stats.json").is_file():
        raise FileNotFoundError(f"{out} has no stats.json: not a finished rephrase run (run `rephrase run` first)")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, d=0: "–" if v is None else f"{v:,.{d}f}"
    env.filters["pct"] = lambda a, b: "–" if not b else f"{100 * a / b:.1f}%"
    template = env.from_string((files("rephrase") / "templates" / "report.html.j2").read_text(encoding="utf-8"))
    target = out / "report.html"
    target.write_text(template.render(**collect(out)), encoding="utf-8")
    return target
