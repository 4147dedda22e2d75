"""The words a heuristic counts, split once per text and shared by every heuristic of the chain.

The Gopher paper (Rae et al. 2021, appendix A) counts whitespace-separated words; datatrove 0.10.1 counts the
tokens of its language tokenizer (spaCy's blank English pipeline), so every comma and full stop is a word. `Words`
gives datatrove's filters either definition through datatrove's own `WordTokenizer` interface, so their rule code
runs unchanged and only the word list differs.

Sharing: the split is memoised on the text itself. Documents flow through the chain one at a time, so the first
heuristic splits a document and the others of the chain get the same list back; a filter that rewrites `doc.text`
(C4 drops lines) makes a new text, which is split again, as it must be. The cache lives beside the documents and is
never written with them (datatrove's `Document` has slots, so nothing can be attached to it but metadata, which
writers write).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, get_args

from datatrove.utils.word_tokenizers import WordTokenizer, load_word_tokenizer

Definition = Literal["paper", "datatrove"]
DEFINITIONS: tuple[str, ...] = get_args(Definition)
# Documents between the first and the last heuristic of a chain at once; 1 would do for a plain chain.
SHARED_TEXTS = 64


@lru_cache(maxsize=SHARED_TEXTS)
def split_words(text: str, definition: Definition, language: str) -> list[str]:
    """Callers must not mutate the list: every heuristic of the chain gets this same one (datatrove's don't)."""
    if definition == "paper":
        return text.split()
    return load_word_tokenizer(language).word_tokenize(text)


class Words(WordTokenizer):
    """A datatrove `WordTokenizer` whose words follow `definition`; sentences are always datatrove's (spaCy's
    sentencizer for English), the only segmentation C4's rule has ever been run with in datatrove."""

    def __init__(self, definition: Definition, language: str) -> None:
        if definition not in DEFINITIONS:
            raise ValueError(f"definition {definition!r}: use one of {', '.join(DEFINITIONS)}")
        super().__init__(language)
        self.definition = definition

    def word_tokenize(self, text: str) -> list[str]:
        return split_words(text, self.definition, self.language)

    def sent_tokenize(self, text: str) -> list[str]:
        return load_word_tokenizer(self.language).sent_tokenize(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return load_word_tokenizer(self.language).span_tokenize(text)
