"""Token-aware chunking: a document too long for one prompt is split on paragraph, then sentence boundaries,
measured with the model's own tokenizer, so that prompt + chunk + expected output fit the context.

Each chunk is rewritten on its own and the rewrites are joined in order. Paragraphs are packed greedily up to the
budget (fewer, larger chunks keep more context for the model); a paragraph over the budget is split into
sentences (datatrove's sentence splitter for the document's language); a sentence over the budget, which only
happens in text without punctuation, is cut into token windows as a last resort.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_PARAGRAPHS = re.compile(r"\n\s*\n|\n(?=\s*[-*•\d])")


def _sentences(text: str, language: str) -> list[str]:
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    try:
        return load_word_tokenizer(language).sent_tokenize(text)
    except Exception:  # a language without a sentence splitter: fall back to English rules
        return load_word_tokenizer("en").sent_tokenize(text)


def split_document(text: str, tokenizer, budget: int, language: str = "en") -> list[str]:
    """Chunks of at most `budget` tokens each, in document order, covering the whole text."""

    def count(s: str) -> int:
        return len(tokenizer(s, add_special_tokens=False)["input_ids"])

    if count(text) <= budget:
        return [text]
    pieces: list[str] = []
    for para in (p.strip() for p in _PARAGRAPHS.split(text)):
        if not para:
            continue
        if count(para) <= budget:
            pieces.append(para)
            continue
        for sentence in _sentences(para, language):
            if count(sentence) <= budget:
                pieces.append(sentence)
            else:
                ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
                pieces += [tokenizer.decode(ids[i : i + budget]) for i in range(0, len(ids), budget)]
    return _pack(pieces, count, budget)


def _pack(pieces: list[str], count: Callable[[str], int], budget: int) -> list[str]:
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        candidate = f"{current}\n\n{piece}" if current else piece
        if current and count(candidate) > budget:
            chunks.append(current)
            current = piece
        else:
            current = candidate
    if current:
        chunks.append(current)
    return chunks


def reassemble(parts: list[str]) -> str:
    return "\n\n".join(p.strip() for p in parts)
