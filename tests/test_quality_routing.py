"""Quality scoring, percentile ensembles and routing by bucket, on real mixed data through the real pipeline.

The runs route with keep and drop only, so no model loads: what is tested is the scoring, calibration, bucketing,
the ledger and stats.json. A second, small classifier is trained here on real text so the ensemble combines two
models that really disagree in scale.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datatrove.data import Document

from filters.classifiers import HISTOGRAM_BINS, QualityScorer
from filters.percentiles import load_ranks, write_calibration
from filters.train import train_classifier
from rephrase.config import ClassifierConfig, ConfigError, load_config
from rephrase.run import RunResult, run_config

REPO = Path(__file__).resolve().parent.parent
TINY = """
name: tiny
version: 1
positives: [{kind: builtin, name: wiki_leads, limit: 150}]
negatives: [{kind: builtin, name: chat, limit: 150}]
params: {dim: 16, epoch: 5, lr: 0.2, word_ngrams: 1, min_count: 1, bucket: 20000, seed: 3, thread: 1}
test_fraction: 0.2
quantize_cutoff: null
output: tiny
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny.yaml").write_text(TINY)
    return train_classifier(folder / "tiny.yaml").model_path


def scraped_junk(folder: Path, sample_dir: Path) -> Path:
    """Two pages the Gopher rules drop as their paper defines them (the sample's real pages and leads all pass
    them): a lead scraped four times over (duplicate lines, Gopher repetition) and a list of teasers that each end
    in an ellipsis (Gopher quality)."""
    rows = [json.loads(x) for x in (sample_dir / "wiki.jsonl").read_text().splitlines() if x.strip()]
    leads = [r["text"] for r in rows if r["lang"] == "en"]
    teasers = "\n".join(" ".join(lead.split()[:12]) + " ..." for lead in leads[1:9])
    path = folder / "junk.jsonl"
    junk = [{"id": "repeated", "text": "\n".join([leads[0]] * 4)}, {"id": "teasers", "text": teasers}]
    path.write_text("".join(json.dumps(x) + "\n" for x in junk))
    return path


def _run(tmp: Path, quality: dict, rules: list[dict], name: str, extra: list[dict] = ()) -> RunResult:
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        ["mix.synthetic_share=null"],
        {
            "input.sources": [
                {"path": "bundled:sample/web.warc.gz", "limit": 24},
                {"path": "bundled:sample/wiki.jsonl", "limit": 60},
                *extra,
            ],
            "quality": quality,
            "routing.rules": rules,
            "run.output": str(tmp / name),
        },
    )
    return run_config(cfg)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, sample_dir: Path) -> RunResult:
    quality = {
        "classifiers": [
            {"name": "starter", "path": "bundled:quality_starter"},
            {"name": "tiny", "path": str(tiny_model)},
        ],
        "scale": "percentile",
        "ensemble": "max",
        "buckets": 5,
    }
    rules = [
        {"max_bucket": 0, "action": "drop"},
        {"min_bucket": 1, "max_bucket": 3, "action": "keep"},
        {"min_bucket": 4, "action": "keep"},
    ]
    tmp = tmp_path_factory.mktemp("ensemble")
    return _run(tmp, quality, rules, "out", [{"path": str(scraped_junk(tmp, sample_dir))}])


def test_mid_rank_percentiles_and_model_check(tmp_path: Path) -> None:
    scorer = QualityScorer([ClassifierConfig(name="q", path="bundled:quality_starter")], buckets=4)
    path = tmp_path / "cal.json"
    write_calibration(path, {"q": [0.9, 0.2, 0.1, 0.2]}, scorer.classifiers, "fp")
    rank = load_ranks(str(path), scorer.classifiers)["q"]
    assert [rank(0.05), rank(0.1), rank(0.2), rank(0.5), rank(0.95)] == [0.0, 0.125, 0.5, 0.75, 1.0]
    other = [("q", scorer.classifiers[0][1], "__label__lq")]
    with pytest.raises(ValueError, match="other classifier models"):
        load_ranks(str(path), other)


def test_ensemble_is_the_max_of_percentiles_and_routes_by_bucket(ensemble_run: RunResult) -> None:
    ledger = pq.read_table(ensemble_run.layout.ledger).to_pylist()
    assert len(ledger) == 86 and len({r["record"] for r in ledger}) == 86
    scored = [r for r in ledger if r["quality_bucket"] is not None]
    assert len(scored) >= 12, "too few documents reached scoring to test routing"
    for row in scored:
        expected = "drop" if row["quality_bucket"] == 0 else "keep"
        assert row["action"] == expected, row
        if row["fate"] == "dropped":
            assert (row["stage"], row["reason"]) == ("route", "low_quality")
    assert {r["quality_bucket"] for r in scored} >= {0, 4}
    # each document keeps both classifiers' scores and percentiles; quality_score is the max percentile
    metas = [
        m for f in sorted(ensemble_run.layout.docs.glob("*.parquet")) for m in pq.read_table(f)["meta"].to_pylist()
    ]
    docs = [{"meta": json.loads(m)} for m in metas]
    assert docs
    for doc in docs:
        meta = doc["meta"]
        assert 0 <= meta["quality_starter"] <= 1 and 0 <= meta["quality_tiny"] <= 1
        assert meta["quality_score"] == max(meta["quality_starter_pct"], meta["quality_tiny_pct"])


def test_funnel_drops_by_language_and_heuristics_with_reasons(ensemble_run: RunResult) -> None:
    ledger = pq.read_table(ensemble_run.layout.ledger).to_pylist()
    reasons = {(r["stage"], r["reason"]) for r in ledger if r["fate"] == "dropped"}
    assert any(stage == "language" and reason.startswith("language:") and reason != "language:en"
               for stage, reason in reasons), reasons  # fmt: skip
    assert {("gopher_repetition", "repeated"), ("gopher_quality", "teasers")} <= {
        (r["stage"], r["doc_id"]) for r in ledger if r["fate"] == "dropped"
    }, reasons
    assert all(reason for _, reason in reasons)


def test_stats_hold_histograms_per_classifier_and_bucket_counts(ensemble_run: RunResult) -> None:
    quality = json.loads(ensemble_run.layout.stats_file.read_text())["quality"]
    assert (quality["scale"], quality["ensemble"]) == ("percentile", "max")
    assert set(quality["histograms"]) == {"starter", "tiny"}
    for hist in quality["histograms"].values():
        assert len(hist["counts"]) == HISTOGRAM_BINS and len(hist["edges"]) == HISTOGRAM_BINS + 1
        assert sum(hist["counts"]) == quality["scored"]
    assert sum(quality["buckets"].values()) == quality["scored"]
    assert json.loads(ensemble_run.layout.calibration_file.read_text())["docs"] == quality["scored"]


def test_single_classifier_percentiles_fill_buckets_evenly(tmp_path: Path) -> None:
    """Calibrated on the run's own documents, percentile buckets hold equal shares (Nemotron-CC's 20 buckets)."""
    quality = {
        "classifiers": [{"name": "starter", "path": "bundled:quality_starter"}],
        "scale": "percentile",
        "buckets": 4,
    }
    result = _run(tmp_path, quality, [{"action": "keep"}], "single")
    buckets = json.loads(result.layout.stats_file.read_text())["quality"]["buckets"]
    counts = [buckets.get(str(b), buckets.get(b, 0)) for b in range(4)]
    assert max(counts) - min(counts) <= 2, counts
    # rerun reuses the calibration and gives the same buckets
    before = result.layout.calibration_file.stat().st_mtime_ns
    again = _run(tmp_path, quality, [{"action": "keep"}], "single")
    assert again.layout.calibration_file.stat().st_mtime_ns == before


def test_bucket_rules_must_fit_the_configured_buckets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bucket 12 does not exist; quality\.buckets is 10"):
        load_config(REPO / "configs" / "demo.yaml", ["routing.rules=[{min_bucket: 12, action: drop}]"])
    with pytest.raises(ConfigError, match="min_bucket 3 > max_bucket 1"):
        load_config(REPO / "configs" / "demo.yaml", ["routing.rules=[{min_bucket: 3, max_bucket: 1, action: drop}]"])


def test_score_scale_is_the_raw_probability() -> None:
    scorer = QualityScorer([ClassifierConfig(name="q", path="bundled:quality_starter")], buckets=10)
    doc = Document(text="The mitochondrion is an organelle found in most eukaryotic cells.", id="x")
    (out,) = list(scorer.run([doc]))
    assert out.metadata["quality_score"] == out.metadata["quality_q"]
    assert out.metadata["quality_bucket"] == min(int(out.metadata["quality_q"] * 10), 9)


def test_routing_by_perplexity_sends_already_known_text_to_structure_adding_prompts(tmp_path: Path) -> None:
    from rephrase.config import RouteRule
    from rephrase.routing import Router

    rules = [
        RouteRule(max_perplexity=10, action="rephrase", prompts=["diverse_qa", "knowledge_list"]),
        RouteRule(min_perplexity=500, action="drop"),
        RouteRule(action="rephrase", prompts=["wikipedia"]),
    ]
    router = Router(rules)
    docs = {name: Document(text="x", id=name, metadata={"perplexity": p}) for name, p in
            {"known": 6.5, "ordinary": 40.0, "noise": 900.0, "unscored": None}.items()}  # fmt: skip
    verdicts = {name: router.filter(doc) for name, doc in docs.items()}
    assert verdicts["noise"] == (False, "routed_drop")
    assert docs["known"].metadata["prompts"] == ["diverse_qa", "knowledge_list"]
    assert docs["ordinary"].metadata["prompts"] == docs["unscored"].metadata["prompts"] == ["wikipedia"]
    path = tmp_path / "c.yaml"
    path.write_text("input: {sources: [{path: x.jsonl}]}\nrouting: {rules: [{max_perplexity: 9, action: keep}]}\n")
    with pytest.raises(ConfigError, match="routes by perplexity but the `perplexity` section is not set"):
        load_config(path)
