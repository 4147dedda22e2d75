"""Gopher, C4 and FineWeb heuristics as their papers define them, built from config and checked before anything runs.

Each class is datatrove 0.10.1's filter with its rule code unchanged; what rephrase changes is what a word is and,
where datatrove's defaults differ from the paper, the thresholds. `definition: paper` (the default) follows the
paper; `definition: datatrove` reproduces datatrove's filter decision for decision, for runs that must match
FineWeb's pipeline. Other parameters are datatrove's and override either definition's defaults. Reason codes are
datatrove's (`gopher_short_doc`, `dup_line_frac`, `too_few_sentences`, `line_punct_ratio`, ...), so the ledger says
which rule removed a page whichever definition ran. Words are split once per document for the whole chain
(filters.words); English sentences come from spaCy's blank pipeline: nothing is downloaded.
"""

from __future__ import annotations

import inspect
from typing import Any

from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.text import TERMINAL_PUNCTUATION
from datatrove.utils.typeshelper import Languages

from filters.words import DEFINITIONS, Definition, Words

# FineWeb's line-end marks: datatrove's terminal punctuation of every script, and C4's end quotation mark.
PUNCTUATION_ENDS = (*sorted(TERMINAL_PUNCTUATION), '"', "'", "\u201d", "\u2019", "\u00bb")


class GopherQuality(GopherQualityFilter):
    """Gopher's quality filter (Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
    Gopher", appendix A.1.1): drop a document with fewer than 50 or more than 100,000 words, a mean word length
    outside 3-10 characters, more than 0.1 hash symbols or ellipses per word, more than 90% of lines starting with a
    bullet or 30% ending with an ellipsis, fewer than 80% of words containing a letter, or fewer than two of "the,
    be, to, of, and, that, have, with". The thresholds are datatrove's defaults, which are the paper's.

    Where datatrove differs: its words are spaCy tokens, so in "Paris, France." the comma and full stop are words
    without a letter; 8.8% of English Wikipedia leads fail the 80% rule that way and none fail it with the paper's
    whitespace-separated words, which `definition: paper` counts (for every rule: word count, mean length, the
    per-word ratios and the stop words)."""

    def __init__(self, definition: Definition = "paper", language: str = Languages.english, **params: Any) -> None:
        super().__init__(language=Words(definition, language), **params)


class GopherRepetition(GopherRepetitionFilter):
    """Gopher's repetition filter (Rae et al. 2021, appendix A.1.1, table A1): drop a document whose duplicate
    lines or paragraphs exceed 30% of them or 20% of its characters, whose most frequent 2-, 3- or 4-gram covers
    more than 20%, 18% or 16% of its characters, or whose duplicated 5- to 10-grams cover more than 15% down to 10%.
    The thresholds are datatrove's defaults, which are table A1's.

    Where datatrove differs: its n-grams are of spaCy tokens, punctuation included; `definition: paper` builds them
    from whitespace-separated words, as the paper's words are. Lines and paragraphs are split as datatrove does."""

    def __init__(self, definition: Definition = "paper", language: str = Languages.english, **params: Any) -> None:
        super().__init__(language=Words(definition, language), **params)


class C4Quality(C4QualityFilter):
    """C4's page cleaning (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
    Transformer", section 2.2, and its reference code, tensorflow_datasets' c4_utils.py): keep only lines that end
    in terminal punctuation and have at least 5 words (whitespace-separated), drop lines mentioning javascript or
    cookie/terms-of-use phrases (the code's addition), then drop a page with fewer than 3 sentences, with "lorem
    ipsum" or with a curly bracket. The bad-words rule needs a download and is not applied.

    Where datatrove differs: its defaults swap the paper's two numbers (5 sentences, 3 words per line);
    `definition: paper` uses the paper's 3 sentences and 5 words. Sentences are counted by spaCy's sentencizer
    under both definitions (the reference code used nltk's punkt, which needs a download)."""

    def __init__(self, definition: Definition = "paper", language: str = Languages.english, **params: Any) -> None:
        paper = {"min_num_sentences": 3, "min_words_per_line": 5} if definition == "paper" else {}
        super().__init__(language=Words(definition, language), **(paper | params))


class FineWebQuality(FineWebQualityFilter):
    """FineWeb's own filters (Penedo et al. 2024, "The FineWeb Datasets: Decanting the Web for the Finest Text Data
    at Scale", section 3.3): drop a document where at most 12% of lines end in punctuation, at least 10% of
    characters are in duplicated lines, or at least 67% of lines are 30 characters or shorter. datatrove adds a rule
    the paper does not list, more than 0.3 newlines per word (`list_ratio`), kept here.

    Where datatrove differs: its duplicated-line threshold is 0.01, not the paper's 0.1; a line ending in a closing
    quote (`... his mistress."`) does not end in punctuation for it, though the paper's rule is a relaxation of C4's,
    which counts the end quotation mark as terminal punctuation (1.1% of Wikipedia leads are one such line); and
    `list_ratio` counts spaCy tokens. `definition: paper` uses 0.1, counts closing quotes and counts
    whitespace-separated words."""

    def __init__(self, definition: Definition = "paper", language: str = Languages.english, **params: Any) -> None:
        paper = {"char_duplicates_ratio": 0.1, "stop_chars": PUNCTUATION_ENDS} if definition == "paper" else {}
        super().__init__(language=Words(definition, language), **(paper | params))


HEURISTICS: dict[str, type[BaseFilter]] = {
    "gopher_quality": GopherQuality,
    "gopher_repetition": GopherRepetition,
    "c4_quality": C4Quality,
    "fineweb_quality": FineWebQuality,
}


def accepted_params(use: str) -> set[str]:
    """rephrase's own parameters and those of the datatrove filter it passes the rest to."""
    ours, theirs = HEURISTICS[use].__mro__[:2]
    names = set(inspect.signature(ours.__init__).parameters) | set(inspect.signature(theirs.__init__).parameters)
    return names - {"self", "params", "exclusion_writer"}


def check_params(use: str, params: dict) -> None:
    """Fail at start with the bad key and the accepted ones, not with a TypeError inside a worker."""
    accepted = accepted_params(use)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"heuristics {use}: unknown parameter(s) {unknown}; accepted: {sorted(accepted)}")
    if params.get("definition", "paper") not in DEFINITIONS:
        raise ValueError(f"heuristics {use}: definition {params['definition']!r}; use one of {', '.join(DEFINITIONS)}")


def build_heuristic(use: str, params: dict, exclusion_writer: DiskWriter | None = None) -> BaseFilter:
    check_params(use, params)
    return HEURISTICS[use](exclusion_writer=exclusion_writer, **params)
