"""MinHash near-dedup on real Wikipedia leads with injected copies, through datatrove's real chained executors.

Copies are made by substituting a known share of words. With the default 5-grams and 14x8 bands a 2% edit keeps
shingle Jaccard near 0.82 (caught ~97% of the time, and on this seeded data every time); a 30% edit leaves
J ~ 0.09, which LSH never pairs. The rows are spread over two files (shards) and two signature tasks, so position
-> key mapping is exercised across tasks, and some copies come before their original.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datatrove.data import Document
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import ParquetWriter
from pydantic import ValidationError

from filters.minhash import (
    MinhashConfig,
    NearDuplicates,
    jaccard_threshold,
    minhash_stages,
)
from rephrase.config import RunConfig
from rephrase.executors import Stage, run_stages
from rephrase.ledger import LedgerWriter

N_BASE = 150
COPIED = {0.0: range(0, 8), 0.02: range(10, 18), 0.05: range(20, 28), 0.30: range(30, 38)}
TEMPLATE_VARIANTS = 6


def substitute(text: str, rate: float, rng: random.Random, vocab: list[str]) -> str:
    """Replace round(rate * words) words (at least one when rate > 0) at random positions by other corpus words."""
    words = text.split()
    k = max(1, round(rate * len(words))) if rate else 0
    for i in rng.sample(range(len(words)), k):
        words[i] = rng.choice([w for w in rng.sample(vocab, 5) if w != words[i]])
    return " ".join(words)


def row(id_: str, text: str, kind: str) -> Document:
    return Document(text=text, id=id_, metadata={"kind": kind, "record": id_.split("#")[0], "key": id_})


@pytest.fixture(scope="module")
def rows(wiki_texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """rows/ in two parquet files, and what each injected row is a copy of."""
    rng = random.Random(7)
    texts = sorted(wiki_texts, key=len, reverse=True)
    template, base = texts[0], texts[1 : N_BASE + 1]  # the longest lead is the template, the rest are originals
    vocab = sorted({w for t in base for w in t.split()})
    originals = [row(f"wiki-{i:03d}", t, "original") for i, t in enumerate(base)]
    copies, truth = [], {}
    for rate, indices in COPIED.items():
        for i in indices:
            copy = row(f"wiki-{i:03d}#copy-{rate}", substitute(base[i], rate, rng, vocab), "synthetic")
            copies.append(copy)
            truth[copy.id] = (rate, f"wiki-{i:03d}")
    # template collapse: the same scaffold answered for several records, only the topic words differ
    words = template.split()
    slots = [0, len(words) // 2]
    collapse = []
    for k in range(TEMPLATE_VARIANTS):
        filled = [rng.choice(vocab) if i in slots else w for i, w in enumerate(words)]
        collapse.append(row(f"rec-{k}#textbook", " ".join(filled), "synthetic"))
    # file 0: half the copies (before their originals), originals 0..74, the template rows
    # file 1: originals 75..149, the other copies (after their originals)
    half = len(copies) // 2
    files = [copies[:half] + originals[:75] + collapse, originals[75:] + copies[half:]]
    folder = tmp_path_factory.mktemp("minhash") / "rows"
    with ParquetWriter(str(folder), output_filename="${rank}.parquet") as writer:
        for rank, docs in enumerate(files):
            for pos, doc in enumerate(docs):
                doc.metadata.update(shard=f"{rank:05d}", row_pos=pos)
                writer.write(doc, rank)
    return folder, {"truth": truth, "originals": [d.id for d in originals], "collapse": [d.id for d in collapse]}


def near_dedup(rows_folder: Path, work: Path, cfg: MinhashConfig) -> tuple[list[str], dict[str, dict]]:
    """Run the three minhash stages and the filter; (kept row ids, dropped id -> ledger row with its detail)."""
    stages = minhash_stages(cfg, [ParquetReader(str(rows_folder))], str(work / "minhash"), tasks=2)
    run_stages(RunConfig(), [Stage(m.name, m.steps, m.tasks) for m in stages], work / "logs")
    step = NearDuplicates(str(work / "minhash" / "twins"), LedgerWriter(str(work / "ledger"), "near_dedup"))
    kept = [d.id for d in step(ParquetReader(str(rows_folder))(None, 0, 1), 0, 1)]
    dropped = {}
    for f in (work / "ledger").rglob("*.parquet"):
        for r in pq.read_table(f).to_pylist():
            dropped[r["doc_id"]] = {**r, "detail": json.loads(r["detail"])}
    assert step.stats["total"].total == len(kept) + len(dropped), "a row neither kept nor in the ledger"
    return kept, dropped


@pytest.fixture(scope="module")
def default_run(rows: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict]:
    return near_dedup(rows[0], tmp_path_factory.mktemp("default"), MinhashConfig())


def test_low_edit_copies_are_removed_naming_their_original(rows: tuple[Path, dict], default_run: tuple) -> None:
    truth = rows[1]["truth"]
    _, dropped = default_run
    for copy_id, (rate, original) in truth.items():
        if rate <= 0.02:
            assert copy_id in dropped, f"{rate:.0%} copy {copy_id} kept"
            assert dropped[copy_id]["reason"] == "near_duplicate" and dropped[copy_id]["stage"] == "near_dedup"
            assert dropped[copy_id]["detail"]["duplicate_of"] == original


def test_originals_and_heavily_edited_rows_are_kept(rows: tuple[Path, dict], default_run: tuple) -> None:
    kept, dropped = default_run
    assert set(rows[1]["originals"]) <= set(kept), "an original was removed although a synthetic twin came first"
    heavy = [c for c, (rate, _) in rows[1]["truth"].items() if rate == 0.30]
    assert set(heavy) <= set(kept)
    # all that was dropped is an injected copy or a template variant: no unrelated lead paired with another
    assert set(dropped) <= set(rows[1]["truth"]) | set(rows[1]["collapse"])


def test_template_collapse_keeps_one_row(rows: tuple[Path, dict], default_run: tuple) -> None:
    kept, dropped = default_run
    first, *rest = rows[1]["collapse"]
    assert first in kept
    assert {dropped[r]["detail"]["duplicate_of"] for r in rest} == {first}


def test_shorter_shingles_and_more_bands_catch_looser_copies(rows: tuple[Path, dict], tmp_path: Path) -> None:
    loose = MinhashConfig(n_grams=3, num_buckets=20, hashes_per_bucket=5)  # threshold 0.55; 5% edits: J ~ 0.75
    kept, dropped = near_dedup(rows[0], tmp_path, loose)
    five = {c: o for c, (rate, o) in rows[1]["truth"].items() if rate == 0.05}
    assert {c: dropped[c]["detail"]["duplicate_of"] for c in five if c in dropped} == five
    assert set(rows[1]["originals"]) <= set(kept)


def test_filter_names_the_missing_stage(tmp_path: Path) -> None:
    step = NearDuplicates(str(tmp_path / "twins"))
    with pytest.raises(FileNotFoundError, match="run the minhash stages"):
        step.filter(Document(text="x", id="a", metadata={"shard": "00000", "key": "a"}))


def test_config_rejects_unknown_keys_and_states_its_threshold() -> None:
    with pytest.raises(ValidationError, match="num_bucket"):
        MinhashConfig(num_bucket=10)
    assert jaccard_threshold(14, 8) == pytest.approx(0.719, abs=1e-3)
