"""datatrove's heuristic filters as configured by rephrase, on real text with the network switched off: each
runs without downloading anything and drops a menu page with its own reason code."""

from __future__ import annotations

import socket

import pytest
from datatrove.data import Document

from filters.heuristics import HEURISTICS, build_heuristic

# The navigation block of a shop page, as crawled pages repeat it: no sentences, no stop words, repeated lines.
MENU = "Home\nAbout us\nContact\nShop\nCart (0)\nLog in\nRegister\nPrivacy policy\nTerms of use\nCookie settings\n" * 3
REASONS = {
    "gopher_quality": "gopher_enough_stop_words",
    "gopher_repetition": "dup_line_frac",
    "c4_quality": "too_few_sentences",
    "fineweb_quality": "line_punct_ratio",
}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access in a test that must run offline")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("use", sorted(HEURISTICS))
def test_each_heuristic_runs_offline_and_names_its_reason(use: str, offline: None, wiki_texts: list[str]) -> None:
    check = build_heuristic(use, {})
    leads = wiki_texts[:40]
    kept = sum(check.filter(Document(text=t, id=str(i))) is True for i, t in enumerate(leads))
    assert check.filter(Document(text=MENU, id="menu")) == (False, REASONS[use])
    # C4 wants 5 sentences, which many short leads lack; the others keep nearly every encyclopedia lead
    assert kept >= (10 if use == "c4_quality" else 35), kept


def test_unknown_heuristic_parameter_lists_the_accepted_ones() -> None:
    with pytest.raises(
        ValueError, match=r"heuristics c4_quality: unknown parameter\(s\) \['min_sentences'\]; accepted"
    ):
        build_heuristic("c4_quality", {"min_sentences": 3})
