"""rephrase's heuristics on real text with the network switched off: each runs without downloading anything, drops
a menu page with its own reason code, follows its paper by default and reproduces datatrove exactly on request."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.word_tokenizers import SpaCyTokenizer

from filters import words
from filters.heuristics import HEURISTICS, build_heuristic

# The navigation block of a shop page, as crawled pages repeat it: no sentences, no stop words, repeated lines.
MENU = "Home\nAbout us\nContact\nShop\nCart (0)\nLog in\nRegister\nPrivacy policy\nTerms of use\nCookie settings\n" * 3
REASONS = {
    "gopher_quality": "gopher_enough_stop_words",
    "gopher_repetition": "dup_line_frac",
    "c4_quality": "too_few_sentences",
    "fineweb_quality": "line_punct_ratio",
}
DATATROVE: dict[str, type[BaseFilter]] = {
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "c4_quality": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
}
BULLETS = "\n".join(f"- item {i} of the list and more words here" for i in range(20))
SHORT_LINES = "\n".join(["Short line."] * 3 + ["A longer line that ends in a full stop, as prose does."])
# One page per rule that every definition drops with the same code: the codes are datatrove's, whichever ran.
RULE_PAGES = [
    ("gopher_quality", "The cat sat on the mat and the dog.", "gopher_short_doc"),
    ("gopher_quality", " ".join(f"#sale{i} on the #deals" for i in range(20)), "gopher_too_many_hashes"),
    ("gopher_quality", BULLETS, "gopher_too_many_bullets"),
    ("gopher_repetition", "The same paragraph of the page.\n\n" * 5 + "Another one.", "dup_para_frac"),
    ("c4_quality", "Lorem ipsum dolor sit amet, consectetur adipiscing elit.", "lorem_ipsum"),
    ("c4_quality", "The function returns { a value } when it is called.", "curly_bracket"),
    ("fineweb_quality", SHORT_LINES, "short_line_ratio"),
]  # fmt: skip


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access in a test that must run offline")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def english_leads(sample_dir: Path) -> list[str]:
    """The bundled English Wikipedia leads, all of 60 words or more (the French and Spanish ones lack English
    stop words, which Gopher rightly drops)."""
    rows = [json.loads(line) for line in (sample_dir / "wiki.jsonl").read_text().splitlines() if line.strip()]
    leads = [r["text"] for r in rows if r["lang"].startswith("en")]
    assert len(leads) >= 100 and all(len(t.split()) >= 60 for t in leads)
    return leads


def decisions(check: BaseFilter, texts: list[str]) -> list[bool | tuple[bool, str]]:
    return [check.filter(Document(text=t, id=str(i))) for i, t in enumerate(texts)]


@pytest.mark.parametrize("use", sorted(HEURISTICS))
def test_each_heuristic_runs_offline_and_names_its_reason(use: str, offline: None, wiki_texts: list[str]) -> None:
    check = build_heuristic(use, {})
    leads = wiki_texts[:40]
    kept = sum(check.filter(Document(text=t, id=str(i))) is True for i, t in enumerate(leads))
    assert check.filter(Document(text=MENU, id="menu")) == (False, REASONS[use])
    # C4 wants 3 sentences, which some short leads lack; the others keep nearly every encyclopedia lead
    assert kept >= (25 if use == "c4_quality" else 35), kept


def test_gopher_words_are_whitespace_separated_so_encyclopedic_text_passes(english_leads: list[str]) -> None:
    """datatrove counts spaCy tokens, so commas and full stops are words without a letter and number-heavy leads
    fail "80% of words contain a letter"; the paper's whitespace words pass every one of them."""
    ours = decisions(build_heuristic("gopher_quality", {}), english_leads)
    theirs = decisions(GopherQualityFilter(), english_leads)
    assert ours.count(True) == len(english_leads)
    dropped = [t for t, d in zip(english_leads, theirs, strict=True) if d is not True]
    assert dropped and {d for d in theirs if d is not True} == {(False, "gopher_below_alpha_threshold")}
    assert max(t.count(",") for t in dropped) >= 5  # the leads lost are the ones full of numbers and commas


def test_c4_uses_the_papers_three_sentences_and_five_words(english_leads: list[str]) -> None:
    """datatrove's defaults swap C4's numbers (5 sentences, 3 words per line) and drop most encyclopedia leads."""
    ours = decisions(build_heuristic("c4_quality", {}), english_leads)
    theirs = decisions(C4QualityFilter(), english_leads)
    assert ours.count(True) > theirs.count(True)
    two_sentences = "Paris is the capital of France and its largest city. It lies on the Seine in the north."
    assert build_heuristic("c4_quality", {}).filter(Document(text=two_sentences, id="2")) == (
        False,
        "too_few_sentences",
    )


def test_fineweb_counts_a_closing_quote_as_the_end_of_a_sentence() -> None:
    quoted = 'He said the Treaty of Paris was "the beginning of a new phase of the development of legal theory."'
    assert build_heuristic("fineweb_quality", {}).filter(Document(text=quoted, id="q")) is True
    assert FineWebQualityFilter().filter(Document(text=quoted, id="q")) == (False, "line_punct_ratio")


@pytest.mark.parametrize("use", sorted(HEURISTICS))
def test_datatrove_definition_reproduces_datatroves_decisions(use: str, wiki_texts: list[str]) -> None:
    texts = [*wiki_texts, MENU, *(text for rule, text, _ in RULE_PAGES if rule == use)]
    ours = decisions(build_heuristic(use, {"definition": "datatrove"}), texts)
    assert ours == decisions(DATATROVE[use](), texts)
    assert ours.count(True) < len(texts)  # the comparison covers drops, not only passes


@pytest.mark.parametrize(("use", "text", "reason"), RULE_PAGES)
@pytest.mark.parametrize("definition", ["paper", "datatrove"])
def test_every_definition_keeps_datatroves_reason_codes(use: str, text: str, reason: str, definition: str) -> None:
    assert DATATROVE[use]().filter(Document(text=text, id="d")) == (False, reason)
    assert build_heuristic(use, {"definition": definition}).filter(Document(text=text, id="d")) == (False, reason)


def run_chain(definition: str, texts: list[str]) -> list[Document]:
    chain: Iterator[Document] = iter([Document(text=t, id=str(i)) for i, t in enumerate(texts)])
    for use in ("gopher_repetition", "gopher_quality", "fineweb_quality"):
        chain = build_heuristic(use, {"definition": definition})(chain)
    return list(chain)


def test_a_chain_splits_each_document_into_words_once(wiki_texts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Three heuristics that count words, one spaCy tokenisation per document (datatrove's own cache holds five
    texts per filter instance, so each filter of a chain tokenises again)."""
    tokenised: list[str] = []
    spacy_words = SpaCyTokenizer.word_tokenize

    def counted(self: SpaCyTokenizer, text: str) -> list[str]:
        tokenised.append(text)
        return spacy_words(self, text)

    monkeypatch.setattr(SpaCyTokenizer, "word_tokenize", counted)
    words.split_words.cache_clear()
    kept = run_chain("datatrove", wiki_texts)
    assert len(tokenised) == len(set(tokenised)) == len(wiki_texts)
    assert 0 < len(kept) < len(wiki_texts)

    words.split_words.cache_clear()
    tokenised.clear()
    run_chain("paper", wiki_texts)
    assert words.split_words.cache_info().misses == len(wiki_texts) and not tokenised


def test_unknown_heuristic_parameter_lists_the_accepted_ones() -> None:
    with pytest.raises(
        ValueError, match=r"heuristics c4_quality: unknown parameter\(s\) \['min_sentences'\]; accepted"
    ):
        build_heuristic("c4_quality", {"min_sentences": 3})
    with pytest.raises(ValueError, match=r"gopher_quality: definition 'fineweb'; use one of paper, datatrove"):
        build_heuristic("gopher_quality", {"definition": "fineweb"})
