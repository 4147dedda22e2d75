"""The validation split: held out by source document, so no rewrite of a validation document is in train, and
loadable as a two-split dataset by `datasets` from the card's own `configs`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from fake_llm import FakeLLM

from rephrase.config import load_config
from rephrase.run import run_config

REPO = Path(__file__).resolve().parent.parent


def test_validation_split_keeps_each_document_with_its_rewrites(tmp_path: Path, wiki_texts: list[str]) -> None:
    import datasets

    texts = [t for t in wiki_texts[:200] if t.isascii() and len(t) > 300][:30]
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    with FakeLLM() as llm:
        updates = {
            "input.sources": [{"path": str(tmp_path / "in.jsonl")}],
            "run.output": str(tmp_path / "out"),
            "rephrase.llm.engine": "vllm-server",
            "rephrase.llm.server_url": llm.url,
            "rephrase.validators": [{"use": "not_empty"}, {"use": "length_ratio"}],
            "dedup.minhash.enabled": False,
            "mix.synthetic_share": None,
            "output.validation_share": 0.3,
        }
        result = run_config(load_config(REPO / "configs" / "demo.yaml", [], updates))
    data = tmp_path / "out" / "dataset" / "data"
    split_of: dict[str, set[str]] = {}
    for f in data.glob("*.parquet"):
        split = f.name.split("-")[0]
        for row in pq.read_table(f, columns=["source_id", "kind"]).to_pylist():
            split_of.setdefault(row["source_id"], set()).add(split)
    assert all(len(s) == 1 for s in split_of.values()), split_of
    held_out = sum(s == {"validation"} for s in split_of.values())
    assert 3 <= held_out <= 18, held_out  # 30% of 30 documents, seeded: about 9
    splits = result.stats["dataset"]["splits"]
    assert set(splits) == {"train", "validation"} and sum(splits.values()) == sum(
        result.stats["dataset"]["rows"].values()
    )
    card = (tmp_path / "out" / "dataset" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    files = {d["split"]: d["path"] for d in meta["configs"][0]["data_files"]}
    loaded = datasets.load_dataset(
        "parquet", data_files={k: str(tmp_path / "out" / "dataset" / v) for k, v in files.items()}
    )
    assert {k: len(v) for k, v in loaded.items()} == splits
    by_dir = datasets.load_dataset("parquet", data_dir=str(data))  # split names inferred from the file names
    assert set(by_dir) == {"train", "validation"}
    record_of = {r["doc_id"]: r["record"] for r in result.read_ledger()}  # provenance down to the input line
    rows = pq.read_table(data, columns=["source_id", "source_record", "n_tokens"]).to_pylist()
    assert all(r["source_record"] == record_of[r["source_id"]] for r in rows)
    assert result.stats["dataset"]["tokens_by_source_file"] == {"in.jsonl": sum(r["n_tokens"] for r in rows)}


def test_card_names_hub_sources_as_source_datasets() -> None:
    from rephrase.card import source_datasets

    sources = [
        {"path": "hf://datasets/HuggingFaceFW/fineweb@main/sample/10BT/*.parquet"},
        {"path": "hf://datasets/mlfoundations/dclm-baseline-1.0/global-shard_01_of_10/"},
        {"path": "local/crawl.warc.gz"},
    ]
    cfg = load_config(REPO / "configs" / "demo.yaml", [], {"input.sources": sources})
    assert source_datasets(cfg) == ["HuggingFaceFW/fineweb", "mlfoundations/dclm-baseline-1.0"]
