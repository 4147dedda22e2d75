"""Semantic dedup, perplexity, rebalancing and curriculum switched on from config, through the real pipeline.

Real Wikipedia leads plus hand-written paraphrases of some of them (tests/test_semantic.py): MinHash cannot see a
paraphrase, semantic dedup must, naming the lead it duplicates. Routing keeps everything, so the only model that
runs is the embedder and the perplexity scorer (transformers, bundled SmolLM2-135M).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_semantic import PARAPHRASES

from rephrase.config import load_config
from rephrase.run import RunResult, run_config
from rephrase.sample_data import wiki_summaries

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("Andreas Vesalius", "Price", "Ultrasound", "Heidelberg University")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    tmp = tmp_path_factory.mktemp("extras")
    leads = wiki_summaries("en-us")
    others = [k for k in sorted(leads) if k not in PARAPHRASES and len(leads[k].get("extract", "")) > 400][:16]
    rows = [{"id": f"wiki:{k}", "text": leads[k]["extract"]} for k in (*SOURCES, *others)]
    rows += [{"id": f"para:{k}", "text": PARAPHRASES[k]} for k in SOURCES]
    (tmp / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        ["mix.synthetic_share=null", "routing.rules=[{action: keep}]", "heuristics=[]"],
        {
            "input.sources": [{"path": str(tmp / "in.jsonl")}],
            "run.output": str(tmp / "out"),
            "dedup.semantic": {"threshold": 0.85},
            "perplexity": {"max_tokens": 128},
            "rebalance": [{"by": "language", "mode": "multiplier", "weights": {"en": 0.5}}],
            "curriculum": {"signal": "n_tokens", "order": "ascending", "stages": 2},
        },
    )
    return run_config(cfg)


def test_paraphrases_are_dropped_naming_their_source(run: RunResult) -> None:
    ledger = pq.read_table(run.layout.ledger).to_pylist()
    assert len(ledger) == len({r["record"] for r in ledger}) == len(SOURCES) * 2 + 16
    by_id = {r["doc_id"]: r for r in ledger}
    for title in SOURCES:
        row = by_id[f"para:{title}"]
        assert (row["fate"], row["stage"], row["reason"]) == ("dropped", "semantic_dedup", "semantic_duplicate")
        detail = json.loads(row["detail"])
        twin = by_id[f"wiki:{title}"]["record"]  # rows are named by record: ids may repeat across files
        assert detail["duplicate_of"] == twin and detail["similarity"] >= 0.85
    semantic_drops = {r["doc_id"] for r in ledger if r["stage"] == "semantic_dedup"}
    assert semantic_drops == {f"para:{t}" for t in SOURCES}, "an unrelated lead was removed"


def test_rebalance_halves_the_tokens_and_drops_are_accounted(run: RunResult) -> None:
    stats = json.loads(run.layout.stats_file.read_text())
    reb = stats["stages"]["finalize"]["rebalance"]
    assert reb["tokens_out_en"] == pytest.approx(reb["tokens_in_en"] / 2, rel=0.1)
    ledger = pq.read_table(run.layout.ledger).to_pylist()
    downsampled = [r for r in ledger if r["reason"] == "rebalance_downsampled"]
    kept = [r for r in ledger if r["fate"] == "kept"]
    assert downsampled and kept and len(downsampled) + len(kept) == 16 + len(SOURCES)


def test_dataset_is_in_curriculum_order_with_perplexity(run: RunResult) -> None:
    files = sorted(run.layout.dataset_data.rglob("*.parquet"))  # name order is curriculum order
    folders = [f.parent.name for f in files]
    assert folders == sorted(folders) and set(folders) == {"stage-0000", "stage-0001"}
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert [r["curriculum_stage"] for r in rows] == sorted(r["curriculum_stage"] for r in rows)
    assert {r["curriculum_stage"] for r in rows} == {0, 1}
    assert max(r["n_tokens"] for r in rows if r["curriculum_stage"] == 0) <= min(
        r["n_tokens"] for r in rows if r["curriculum_stage"] == 1
    )
    assert all(r["perplexity"] and r["perplexity"] > 1 for r in rows)
    assert all(r["semantic_cluster"] is not None for r in rows)


def test_card_shows_the_figures(run: RunResult) -> None:
    card = (run.layout.dataset / "README.md").read_text()
    for needle in ("Semantic dedup removed 4 of", "## Rebalancing", "| en |", "## Curriculum", "| quality bucket |"):
        assert needle in card, needle
