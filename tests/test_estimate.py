"""`rephrase estimate` on real data: the bundled WARC and Wikipedia leads plus a hostile JSONL and a parquet copy,
through the demo config's real filters, classifier, prompts and tokenizer (no model is loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl_bytes

from rephrase.config import Config, SourceConfig, load_config
from rephrase.estimate import count_records, estimate, format_estimate
from rephrase.inputs import ReadSources, build_readers

REPO = Path(__file__).resolve().parent.parent
GERMAN = "Die Photosynthese ist ein Prozess, bei dem Pflanzen Lichtenergie in chemische Energie umwandeln. " * 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, wiki_texts: list[str], sample_dir: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("estimate")
    lines = [json.dumps({"id": f"w{i}", "text": t}).encode() for i, t in enumerate(wiki_texts[:30])]
    lines[3:3] = [b'{"id": "cut", "text": "no end', b"", json.dumps({"id": "de", "text": GERMAN}).encode()]
    lines.append(json.dumps({"id": "w0-copy", "text": wiki_texts[0]}).encode())
    jsonl = write_jsonl_bytes(tmp / "mixed.jsonl", lines)
    table = pa.table({"id": [f"p{i}" for i in range(40)], "text": wiki_texts[30:70]})
    pq.write_table(table, tmp / "wiki.parquet")
    return {"jsonl": jsonl, "parquet": tmp / "wiki.parquet", "warc": sample_dir / "web.warc.gz", "tmp": tmp}


def config(inputs: dict[str, Path], *overrides: str) -> Config:
    sources = [{"path": str(inputs[k])} for k in ("jsonl", "parquet", "warc")]
    return load_config(REPO / "configs" / "demo.yaml", list(overrides), {"input.sources": sources})


def test_count_records_matches_what_the_readers_yield(inputs: dict[str, Path]) -> None:
    for fmt in ("jsonl", "parquet", "warc"):
        path = inputs[fmt]
        readers = build_readers(SourceConfig(path=str(path)), str(path), -1, inputs["tmp"] / fmt, max_doc_bytes=10**6)
        read = sum(1 for _ in ReadSources(readers).run(None, 0, 1))
        assert count_records(str(path), fmt) == read, fmt
    assert count_records(str(inputs["jsonl"]), "jsonl") == 33  # 30 texts + malformed + German + copy; blank skipped


def test_estimate_accounts_for_every_sampled_record(inputs: dict[str, Path]) -> None:
    est = estimate(config(inputs), sample=12, tokens_per_s=50.0)
    jsonl, parquet, warc = est.sources
    assert [s.records for s in est.sources] == [33, 40, count_records(str(inputs["warc"]), "warc")]
    for s in est.sources:
        assert s.sampled == 12
        assert s.passed + sum(s.drops.values()) == s.sampled, s
        assert s.to_rephrase <= s.passed
    # the first 12 JSONL lines hold one malformed record and one German page; wiki leads pass
    assert jsonl.drops["input"] == 1 and jsonl.drops["language"] == 1
    assert parquet.passed == parquet.to_rephrase > 0
    assert warc.drops["language"] > 0  # the bundled crawl is multilingual; the demo keeps English
    for s in (jsonl, parquet):
        assert s.prompt_tokens > s.source_tokens > 0  # the chat template and instructions come on top
        assert s.output_tokens == pytest.approx(2 * s.source_tokens, rel=0.1)  # output ~= input, n = 2
    assert est.total("passed") == pytest.approx(sum(s.passed * s.records / s.sampled for s in est.sources))
    assert est.hours == pytest.approx(est.total("output_tokens") / 50.0 / 3600)
    table = format_estimate(est)
    assert "CPU-hours" in table and "mixed.jsonl" in table and "50 out tok/s" in table


def test_estimate_uses_a_previous_runs_token_ratio(inputs: dict[str, Path]) -> None:
    run = inputs["tmp"] / "previous"
    run.mkdir()
    llm = {"requests": 10, "resampled": 0, "candidates_generated": 30, "tokens_in": 1000, "tokens_out": 1500}
    (run / "stats.json").write_text(json.dumps({"llm": llm}))
    cfg = config(inputs, "rephrase.sampling.max_tokens=100000")  # no cap: the ratio alone decides
    base, informed = estimate(cfg, sample=6, tokens_per_s=None), estimate(cfg, sample=6, from_run=run)
    # 50 output tokens per candidate for 100 source tokens per request: ratio 0.5, 3 candidates instead of n = 2
    assert informed.total("output_tokens") == pytest.approx(base.total("output_tokens") * 0.5 * 3 / 2)
    assert base.tokens_per_s == 100.0 and base.device == "cpu"


def test_estimate_rejects_a_bad_sample_size(inputs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="--sample 0"):
        estimate(config(inputs), sample=0, tokens_per_s=None)


def test_a_measured_estimate_predicts_the_output_tokens_of_the_run(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Without a previous run, --measure rewrites a few routed sample documents with the configured engine (here
    the real vllm-server engine against tests/fake_llm.py, whose rewrites fail validators for one document in four
    at low temperature, so resampling happens) and the estimate of the whole input lands near the real run."""
    from fake_llm import FakeLLM, run_updates

    from rephrase.run import run_config

    sources = [{"path": str(inputs["parquet"])}]
    with FakeLLM() as llm:
        updates = run_updates(llm.url, **{"input.sources": sources, "run.output": str(tmp_path / "out")})
        cfg = load_config(REPO / "configs" / "demo.yaml", ["mix.synthetic_share=null"], updates)
        measured = estimate(cfg, sample=40, measure=8)
        assumed = estimate(cfg, sample=40, measure=0)
        actual = run_config(cfg).stats["llm"]
    assert measured.output_basis.startswith("measured on 8 documents with vllm-server")
    assert len(llm.requests) > actual["requests"]  # the measurement's requests came on top of the run's
    predicted = measured.total("output_tokens")
    assert abs(predicted - actual["tokens_out"]) <= 0.25 * actual["tokens_out"], (predicted, actual)
    assert measured.candidates_per_request > cfg.rephrase.sampling.n  # resampled candidates were counted
    assert assumed.output_basis.startswith("assumed (--measure 0)")


def test_estimate_rejects_a_negative_measure(inputs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="--measure -1"):
        estimate(config(inputs), sample=2, measure=-1)
