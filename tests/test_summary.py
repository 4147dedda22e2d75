"""The end-of-run summary and the estimate print data (page text, ids, file names) through rich: nothing in the
data may be read as rich markup, or a forum post's `[/quote]` crashes `rephrase run` after the run succeeded."""

from __future__ import annotations

import json
from pathlib import Path

from fake_llm import FakeLLM, run_updates

from rephrase.config import load_config
from rephrase.estimate import estimate, format_estimate
from rephrase.report import print_summary
from rephrase.run import RunResult, run_config

REPO = Path(__file__).resolve().parent.parent
SETS = ["language.enabled=false", "heuristics=[]", "mix.synthetic_share=null"]
RULES = [{"action": "rephrase", "prompts": ["wikipedia"], "keep_original": True}]


def forum_posts(wiki_texts: list[str], folder: Path) -> Path:
    """Real leads wrapped in forum quote markup, with ids that look like rich tags, in a file named like one."""
    path = folder / "[red]forum.jsonl"
    rows = [
        {"id": f"[bold]post-{i}", "text": f"[quote=anna]{t}[/quote] [/] Agreed, see [link=x]here[/link]."}
        for i, t in enumerate(t for t in wiki_texts if len(t) > 400)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    return path


def test_markup_in_the_data_is_printed_as_text(wiki_texts: list[str], tmp_path: Path, capsys) -> None:
    inputs = forum_posts(wiki_texts, tmp_path)
    with FakeLLM() as llm:
        updates = run_updates(llm.url, **{"input.sources": [{"path": str(inputs)}], "run.output": str(tmp_path / "o")})
        cfg = load_config(REPO / "configs" / "demo.yaml", SETS, {**updates, "routing.rules": RULES})
        result = run_config(cfg)
    assert isinstance(result, RunResult) and result.stats["fates"].get("rephrased")
    capsys.readouterr()
    print_summary(result)
    shown = capsys.readouterr().out
    assert "[/quote]" in shown and "[bold]post-" in shown  # as text, not eaten as tags

    printed = format_estimate(estimate(cfg, 4, 100.0, None))
    assert "[red]forum.jsonl" in printed
