"""Quality-classifier training on real registry text with real fastText, and the shipped starter model.

Built-in training sources are fetched and extracted once into the shared cache ($REPHRASE_CACHE, else
~/.cache/rephrase); later runs read them from there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import fasttext
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset
from datatrove.pipeline.readers import WarcReader
from sklearn.metrics import roc_auc_score

from filters.train import format_report, hq_scores, load_train_config, normalize_for_fasttext, train_classifier
from filters.train_data import boilerplate_lines, builtin_texts, file_texts
from rephrase.config import ConfigError

MODELS = Path(__file__).resolve().parents[1] / "filters" / "models"
SMALL_CONFIG = """
name: tiny
version: 3
positives: [{kind: builtin, name: wiki_leads, limit: 200}]
negatives: [{kind: builtin, name: chat, limit: 120}, {kind: builtin, name: usenet, limit: 80}]
params: {dim: 16, epoch: 5, lr: 0.2, word_ngrams: 2, min_count: 1, bucket: 20000, seed: 7, thread: 1}
test_fraction: 0.25
quantize_cutoff: null
output: out/tiny
"""


def test_normalisation_is_one_line_lowercase_with_punctuation_as_tokens() -> None:
    text = "Hello, World!\n\nIt costs 42 €.\tＦｕｌｌ"
    assert normalize_for_fasttext(text) == "hello , world ! it costs 00 € . full"
    assert normalize_for_fasttext(" \n\t ") == ""


def test_config_errors_name_file_key_and_value(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SMALL_CONFIG.replace("test_fraction: 0.25", "test_fractoin: 0.25").replace("chat", "chit-chat"))
    with pytest.raises(ConfigError) as err:
        load_train_config(path)
    message = str(err.value)
    assert f"{path}: test_fractoin: unknown key (got 0.25)" in message
    assert "negatives.0.builtin.name" in message and "'chit-chat'" in message and "known: chat" in message


def test_file_sources_read_jsonl_parquet_and_saved_datasets(tmp_path: Path, wiki_texts: list[str]) -> None:
    texts = wiki_texts[:5]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts) + '{"body": ""}\n')
    pq.write_table(pa.table({"body": texts}), tmp_path / "a.parquet")
    Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "ds"))
    for kind, name in (("jsonl", "a.jsonl"), ("parquet", "a.parquet"), ("hf_disk", "ds")):
        assert file_texts(kind, tmp_path / name, "body") == texts


def test_training_excludes_the_sample_leads(wiki_texts: list[str]) -> None:
    positives = set(builtin_texts("wiki_leads"))
    assert len(positives) > 5_000
    assert not positives & set(wiki_texts)


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[object, str, dict]]:
    """The small config trained twice, in two folders; each run's report, printed report and model card."""
    runs = []
    for i in range(2):
        folder = tmp_path_factory.mktemp(f"train{i}")
        (folder / "tiny.yaml").write_text(SMALL_CONFIG)
        report = train_classifier(folder / "tiny.yaml")
        runs.append((report, format_report(report), json.loads(report.card_path.read_text())))
    return runs


def test_small_training_reports_held_out_metrics(small_runs: list) -> None:
    report, printed, _ = small_runs[0]
    assert report.model_path.name == "tiny.bin" and report.model_path.parent.name == "out"
    assert report.counts["test"] == {"hq": 50, "lq": 50}  # balanced, stratified 25 %
    assert report.sources == {"hq:builtin:wiki_leads": 200, "lq:builtin:chat": 120, "lq:builtin:usenet": 80}
    assert report.metrics["roc_auc"] > 0.9
    for needle in ("tiny@v3", "held-out", "roc_auc", "cut-off", "precision", "recall"):
        assert needle in printed
    assert [r["cutoff"] for r in report.thresholds] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    kept = [r["kept"] for r in report.thresholds]
    assert kept == sorted(kept, reverse=True)  # a higher cut-off never keeps more


def test_training_is_deterministic(small_runs: list) -> None:
    (first, printed_1, _), (second, printed_2, _) = small_runs
    assert first.model_sha256 == second.model_sha256
    assert first.metrics == second.metrics and first.thresholds == second.thresholds
    assert printed_1.splitlines()[1:-1] == printed_2.splitlines()[1:-1]  # all but paths and timing


def test_model_card_describes_the_model(small_runs: list) -> None:
    report, _, card = small_runs[0]
    assert card["ref"] == "tiny@v3" and card["params"]["seed"] == 7
    assert card["model_sha256"] == hashlib.sha256(report.model_path.read_bytes()).hexdigest()
    assert card["metrics_test"] == report.metrics and card["sources"] == report.sources
    assert "fasttext" in card["fasttext"] and card["trained_at"]


def test_shipped_card_matches_shipped_model() -> None:
    card = json.loads((MODELS / "quality_starter.json").read_text())
    model = MODELS / card["model_file"]
    assert model.stat().st_size < 5_000_000
    assert card["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert card["metrics_test"]["roc_auc"] > 0.95


def test_shipped_model_ranks_held_out_wiki_above_boilerplate(sample_dir: Path) -> None:
    """Neither the sample's leads nor its pages were seen in training (different leads, different packages)."""
    model = fasttext.load_model(str(MODELS / "quality_starter.ftz"))
    rows = [json.loads(line) for line in (sample_dir / "wiki.jsonl").read_text().splitlines()]
    wiki = [r["text"] for r in rows if r["lang"] == "en"]  # the starter model is English, like DCLM's
    pages = list(WarcReader(str(sample_dir), glob_pattern="*.warc.gz")())[::3]
    boilerplate = [b for b in ("\n".join(boilerplate_lines(p.text)) for p in pages) if len(b.split()) >= 30]
    wiki_scores, boilerplate_scores = hq_scores(model, wiki), hq_scores(model, boilerplate)
    auc = roc_auc_score([1] * len(wiki) + [0] * len(boilerplate), wiki_scores + boilerplate_scores)
    assert len(boilerplate) >= 40
    assert auc > 0.95
    assert sum(s >= 0.5 for s in wiki_scores) / len(wiki) > 0.9
    assert sum(s < 0.5 for s in boilerplate_scores) / len(boilerplate) > 0.9
