"""LLM stage throughput: rephrase's RephraseStep against raw vLLM offline, on the same prompts, engine and machine.

Prompts: English Wikipedia leads from the bundled sample (rephrase.sample_data) rendered with the `wikipedia`
prompt from prompts/. One `vllm.LLM` is built once (through rephrase.llm.vllm_offline.VLLMEngine, so both paths see the
same engine arguments, seed and CPU environment) and shared:
  raw vLLM   `llm.chat(conversations, SamplingParams(n, temperature, top_p, max_tokens))`, one call, our code unused
  rephrase   RephraseStep.run over datatrove Documents routed to `rephrase` (tokenizer, chunking, prompt render,
             engine.generate, the default validators, selection, checkpoint log), fresh checkpoint dir per run;
             `max_output_ratio=None` and `resample_rounds=0` so it asks for exactly the raw path's work
Output tokens: raw = sum of len(token_ids) over every candidate; rephrase = the step's `output_tokens` stat. The
paths sample different random streams, so their token counts differ (by 10% at 16 documents: a round lasts as long
as its longest candidate, so tok/s moves with what was sampled); `--temperature 0 --n 1` makes both paths produce
the same tokens, and "engine idle" is the share of the stage's time when the engine held none of its requests
(its own overhead, whatever was sampled). The
tokenizer and the validators' models load once per process (rephrase.loaded), in the warm-up here as in a task's
first rank; the rephrase column's time includes validating the batch after it returns (the one batch of a run
here, so nothing overlaps it), and "engine s" is the time the engine held at least one request. Runs alternate (raw,
rephrase n, rephrase n=1, raw n=1, rephrase adaptive) and repeat; medians are printed. On a shared machine,
trust the ratios more than the figures.

Goodput is what a curation run pays for: documents with an accepted rewrite per second, every path judged by the
same default validators. `rephrase adaptive 1+KxR` draws one candidate per document, then K more in one request
(`resample_n`) only for documents whose candidates all failed, for up to R extra rounds (`resample_rounds`); the
datatrove runner (--datatrove) draws n rollouts for every document and its outputs are validated afterwards, the
validation time counted in its seconds.
On one batch the resamples of the documents that fail last run nearly alone; `--stream D` measures goodput the
way a run meets it, over D documents read in the stage's default batches (resamples join the next documents'
requests in the running engine), against the runner given all D documents at once (its own default).

    python scripts/bench_llm.py                                   # 32 leads, 128 new tokens, n=4, 3 repeats
    python scripts/bench_llm.py --docs 16 --max-tokens 96 --repeats 2
    python scripts/bench_llm.py --stream 96 --max-tokens 320 --repeats 1 --datatrove   # goodput on a stream
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rephrase.config import RephraseConfig

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    path: str
    n: int
    seconds: float
    output_tokens: int
    engine_seconds: float | None = None
    accepted: int | None = None

    @property
    def tok_s(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def goodput(self) -> float:
        """Documents with an accepted rewrite per second."""
        return (self.accepted or 0) / self.seconds


def english_leads(count: int) -> list[dict]:
    from rephrase.sample_data import ensure_sample

    rows = [json.loads(line) for line in (ensure_sample() / "wiki.jsonl").read_text().splitlines() if line.strip()]
    leads = [r for r in rows if r.get("lang") == "en"][:count]
    if len(leads) < count:
        raise SystemExit(f"--docs {count}: the bundled sample has only {len(leads)} English leads")
    return leads


def run_raw(llm, conversations: list, args: argparse.Namespace, n: int) -> Run:
    from vllm import SamplingParams

    params = SamplingParams(n=n, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    start = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return Run("raw vLLM", n, seconds, sum(len(o.token_ids) for out in outputs for o in out.outputs))


def run_rephrase(
    engine,
    leads: list[dict],
    prompt,
    args: argparse.Namespace,
    n: int,
    max_tokens: int,
    adaptive: tuple[int, int] | None = None,
    batch_size: int | None = None,
) -> Run:
    from datatrove.data import Document

    from rephrase.config import LLMConfig, RephraseConfig, SamplingConfig
    from rephrase.llm.stage import RephraseStep

    defaults = RephraseConfig()
    sampling = SamplingConfig(
        n=n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=max_tokens,
        max_output_ratio=None,
        resample_rounds=adaptive[1] if adaptive else 0,
        resample_n=adaptive[0] if adaptive else None,
    )
    docs = [
        Document(
            text=r["text"], id=r["id"], metadata={"record": r["id"], "action": "rephrase", "prompts": ["wikipedia"]}
        )
        for r in leads
    ]
    with tempfile.TemporaryDirectory(prefix="bench-llm-ckpt-") as checkpoint_dir:
        step = RephraseStep(
            llm=LLMConfig(engine="vllm", model=args.model, engine_args=engine_args(args)),
            sampling=sampling,
            prompts={"wikipedia": prompt},
            validators=defaults.validators,
            batch_size=batch_size or len(docs),  # default: one batch, as the raw path sends
            chunk_tokens=defaults.chunk_tokens,
            max_doc_tokens=defaults.max_doc_tokens,
            seed=args.seed,
            checkpoint_dir=checkpoint_dir,
            engine=lambda: engine,  # share the loaded engine instead of a second 40 s start
        )
        start = time.perf_counter()
        for _ in step.run(iter(docs)):
            pass
        seconds = time.perf_counter() - start
    stats = step.stats
    if stats["chunks"].total != len(docs):
        raise SystemExit(f"{stats['chunks'].total} chunks for {len(docs)} docs: the work differs from the raw path")
    return Run(
        f"rephrase adaptive 1+{adaptive[0]}x{adaptive[1]}" if adaptive else "rephrase",
        n,
        seconds,
        int(stats["output_tokens"].total),
        engine_seconds=stats["generate_seconds"].total,
        accepted=int(stats["accepted"].total),
    )


def engine_args(args: argparse.Namespace) -> dict:
    return {"dtype": args.dtype, "enforce_eager": args.enforce_eager, "max_model_len": args.max_model_len}


def run_datatrove(
    server_url: str, api_key: str, model: str, leads: list[dict], prompt, args: argparse.Namespace, n: int
) -> Run:
    """datatrove's InferenceRunner against a running vLLM OpenAI server: n rollouts = n requests per document;
    then the rollouts are judged by rephrase's default validators (timed too: goodput needs the verdicts)."""
    from datatrove.data import Document
    from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
    from datatrove.pipeline.writers import JsonlWriter

    from rephrase.config import RephraseConfig
    from rephrase.llm.engine import Completion
    from rephrase.llm.selection import select_round
    from rephrase.llm.stage import build_validators

    candidates: dict[str, list[Completion]] = {}

    async def rollout(doc: Document, generate):
        result = await generate({"messages": prompt.messages(doc.text)})
        tokens = result.usage.get("completion_tokens", 0)
        candidates.setdefault(doc.id, []).append(Completion(result.text, result.finish_reason, tokens))
        return result.text

    params = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p}
    docs = [Document(text=r["text"], id=r["id"]) for r in leads]
    with tempfile.TemporaryDirectory(prefix="bench-llm-dt-") as out:
        config = InferenceConfig(
            server_type="endpoint",
            model_name_or_path=model,
            endpoint_url=server_url,
            api_key=api_key,
            model_max_context=args.max_model_len,
            default_generation_params=params,
            rollouts_per_document=n,
            metric_interval=3600,
        )
        runner = InferenceRunner(rollout, config, JsonlWriter(out))
        validators = build_validators(RephraseConfig().validators)
        start = time.perf_counter()
        runner.run(iter(docs))
        picks = select_round([(d.text, candidates.get(d.id, [])) for d in docs], validators)  # as the stage does
        accepted = sum(p.accepted for p in picks)
        seconds = time.perf_counter() - start
    done = int(runner.stats["successful_requests"].total)
    if done != n * len(docs):
        raise SystemExit(f"datatrove runner: {done} of {n * len(docs)} requests succeeded")
    return Run("datatrove runner", n, seconds, int(runner.stats["completion_tokens"].total), accepted=accepted)


def datatrove_runs(
    model: str, leads: list[dict], prompt, args: argparse.Namespace
) -> dict[tuple[str, int], list[Run]]:
    """(d): only with --datatrove and when datatrove's inference runner imports; starts its own vLLM server."""
    try:
        from datatrove.pipeline.inference.run_inference import InferenceRunner  # noqa: F401
    except ImportError as e:
        print(f"datatrove inference runner: skipped (not installed: {e})")
        return {}
    if not args.datatrove:
        print("datatrove inference runner: skipped (installed; pass --datatrove to start a vLLM server and run it)")
        return {}
    from rephrase.llm.server import VLLMServer

    ns = [args.n] if args.stream else list(dict.fromkeys((args.n, 1)))
    runs: dict[tuple[str, int], list[Run]] = {("datatrove runner", n): [] for n in ns}
    with VLLMServer(model, served_model_name=model, engine_args=engine_args(args), seed=args.seed) as server:
        run_datatrove(server.base_url, server.api_key, model, leads[:2], prompt, args, 1)  # warm-up
        for repeat in range(1, args.repeats + 1):
            for key in runs:
                run = run_datatrove(server.base_url, server.api_key, model, leads, prompt, args, key[1])
                runs[key].append(run)
                print(f"  repeat {repeat} {run.path} n={run.n}: {run.output_tokens} tok in {run.seconds:.1f} s")
    return runs


def median_run(runs: list[Run]) -> Run:
    """The run with the median throughput (the lower middle one for an even count), so its columns agree."""
    ordered = sorted(runs, key=lambda r: r.tok_s)
    return ordered[(len(ordered) - 1) // 2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=32, help="English Wikipedia leads (bundled sample has 120)")
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens per candidate")
    parser.add_argument("--n", type=int, default=4, help="candidates per document; also compared with n=1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="bundled:smollm2-135m", help="resolved by rephrase.models.resolve_model")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="engine seed (vLLM is seeded once, at start)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false")
    parser.add_argument("--datatrove", action="store_true", help="also run datatrove's inference runner (a server)")
    parser.add_argument(
        "--adaptive",
        nargs="+",
        default=["3x1"],
        metavar="KxR",
        type=lambda v: tuple(int(x) for x in v.split("x")),
        help="adaptive paths: one candidate, then K more per extra round for R rounds where all failed (3x1: "
        "1 then 3, as n=4 at most; 1x3: one at a time, up to 4)",
    )
    parser.add_argument(
        "--stream",
        type=int,
        metavar="D",
        help="only goodput over D leads: rephrase adaptive in its default batches vs the datatrove runner (n)",
    )
    args = parser.parse_args()
    if args.temperature == 0 and args.n != 1:
        parser.error("--temperature 0 (greedy) needs --n 1: vLLM draws a single greedy candidate")
    if args.stream and not args.datatrove:
        parser.error("--stream compares against datatrove's runner: add --datatrove")
    return args


def main() -> None:
    args = parse_args()
    from rephrase.llm.engine import render
    from rephrase.llm.prompts import load_prompts
    from rephrase.llm.vllm_cpu import cpu_env_defaults
    from rephrase.llm.vllm_offline import VLLMEngine
    from rephrase.models import resolve_model

    cpu_env_defaults()  # VLLM_CPU_NUM_OF_RESERVED_CPU=0, VLLM_CPU_KVCACHE_SPACE=2 unless set (CPU only)
    leads = english_leads(args.stream or args.docs)
    prompt = load_prompts(REPO / "prompts")["wikipedia"]
    conversations = [prompt.messages(r["text"]) for r in leads]

    start = time.perf_counter()
    engine = VLLMEngine(resolve_model(args.model), engine_args=engine_args(args), seed=args.seed)
    init_s = time.perf_counter() - start
    engine.close = lambda: None  # RephraseStep closes its engine after each run; this one is shared

    prompt_tokens = sum(render(engine.tokenizer, conversations)[1])
    print(f"engine init {init_s:.1f} s; {len(leads)} docs, {prompt_tokens / len(leads):.0f} prompt tokens/doc")

    # warm-up (not timed): first calls compile kernels; the tokenizer and validators' models load for the process
    run_raw(engine.llm, conversations[:2], args, 1)
    run_rephrase(engine, leads[:2], prompt, args, 1, max_tokens=16)

    variants = {f"rephrase adaptive 1+{k}x{r}": (k, r) for k, r in args.adaptive}
    plan = [(path, 1) for path in variants]
    if not args.stream:
        plan = [("raw", args.n), ("rephrase", args.n), ("rephrase", 1), ("raw", 1), *plan]
    runs: dict[tuple[str, int], list[Run]] = {key: [] for key in plan}
    batch_size = RephraseConfig().batch_size if args.stream else None
    for repeat in range(1, args.repeats + 1):
        for path, n in plan:
            if path == "raw":
                run = run_raw(engine.llm, conversations, args, n)
            else:
                run = run_rephrase(engine, leads, prompt, args, n, args.max_tokens, variants.get(path), batch_size)
            runs[path, n].append(run)
            print(f"  repeat {repeat} {run.path} n={n}: {run.output_tokens} tok in {run.seconds:.1f} s", flush=True)

    engine.llm.llm_engine.engine_core.shutdown()  # free its memory and cores before a server starts
    runs.update(datatrove_runs(engine.model, leads, prompt, args))
    report(runs, args, len(leads), batch_size)


def report(runs: dict[tuple[str, int], list[Run]], args: argparse.Namespace, docs: int, batch: int | None) -> None:
    header = "| path | n | out tokens | seconds | out tok/s | engine s | accepted | goodput docs/s | all runs tok/s |"
    print(f"\n{header}\n|---|---|---|---|---|---|---|---|---|")
    for key in runs:
        r = median_run(runs[key])
        engine_s = f"{r.engine_seconds:.1f}" if r.engine_seconds is not None else "-"
        accepted = f"{r.accepted}/{docs}" if r.accepted is not None else "-"
        goodput = f"{r.goodput:.3f}" if r.accepted is not None else "-"
        every = ", ".join(f"{x.tok_s:.1f}" for x in runs[key])
        print(
            f"| {r.path} | {r.n} | {r.output_tokens} | {r.seconds:.1f} | {r.tok_s:.1f} | {engine_s} | {accepted} | "
            f"{goodput} | {every} |"
        )

    def med(key: tuple[str, int], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs[key])

    print()
    for key in runs:
        if key[0].startswith("rephrase"):  # independent of how many tokens each path happened to sample
            idle = statistics.median(1 - r.engine_seconds / r.seconds for r in runs[key])
            print(f"{key[0]}, n={key[1]}: engine idle {idle:.1%} of the stage's time (median)")
    if ("raw", args.n) in runs:
        for n in dict.fromkeys((args.n, 1)):
            ratio = med(("rephrase", n), "tok_s") / med(("raw", n), "tok_s")
            print(f"rephrase / raw vLLM, n={n}: {ratio:.2f}x output tok/s (median)")
        if args.n != 1:
            for path in ("rephrase", "raw"):
                ratio = med((path, args.n), "seconds") / med((path, 1), "seconds")
                target = " (target <= 2.5x)" if path == "rephrase" else ""
                print(f"{path}: n={args.n} / n=1 time: {ratio:.2f}x{target}")
    if ("datatrove runner", args.n) in runs:
        if ("rephrase", args.n) in runs:
            for n in dict.fromkeys((args.n, 1)):
                ratio = med(("rephrase", n), "tok_s") / med(("datatrove runner", n), "tok_s")
                print(f"rephrase / datatrove runner, n={n}: {ratio:.2f}x output tok/s (median)")
        dt = med(("datatrove runner", args.n), "goodput")
        for key in [k for k in runs if k[0].startswith("rephrase adaptive")] + [("rephrase", args.n)]:
            if key not in runs:
                continue
            if not dt:
                print("goodput: the datatrove runner had no accepted rewrite; raise --max-tokens for a ratio")
                break
            ratio = med(key, "goodput") / dt
            print(f"goodput {key[0]} (n={key[1]}) / datatrove runner (n={args.n}): {ratio:.2f}x (target >= 1.3x)")
    shape = f"stream of {docs} docs in batches of {batch}" if batch else f"{docs} docs in one batch"
    print(
        f"\nsettings: {shape}; model {args.model}, {args.dtype}, enforce_eager={args.enforce_eager}, "
        f"max_model_len {args.max_model_len}, T={args.temperature}, top_p={args.top_p}, max_tokens {args.max_tokens}, "
        f"repeats {args.repeats}; {platform.machine()} {os.cpu_count()} CPUs; "
        f"VLLM_CPU_NUM_OF_RESERVED_CPU={os.environ.get('VLLM_CPU_NUM_OF_RESERVED_CPU')}, "
        f"VLLM_CPU_KVCACHE_SPACE={os.environ.get('VLLM_CPU_KVCACHE_SPACE')}"
    )


if __name__ == "__main__":
    main()
