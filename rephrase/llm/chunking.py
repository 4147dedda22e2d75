"""Token-aware chunking: a document too long for one prompt is split on paragraph, then sentence boundaries,
measured with the model's own tokenizer, so that prompt + chunk + expected output fit the context.

Each chunk is rewritten on its own and the rewrites are joined in order. Paragraphs are packed greedily up to the
budget (fewer, larger chunks keep more context for the model); a paragraph over the budget is split into
sentences (datatrove's sentence splitter for the document's language); a sentence over the budget, which only
happens in text without punctuation, is cut into token windows as a last resort.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from datatrove.data import Document

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


@dataclass
class Job:
    """One chunk of one document for one prompt; `outcome` is {"rewrite": {...}} or {"failure": reason}."""

    doc: Document
    index: int
    of: int
    text: str
    tokens: int
    key: str = ""
    outcome: dict | None = None


def combine(parts: list[Job]) -> tuple[dict | None, tuple[str, str]]:
    """A document's rewrite from its chunks' outcomes: all chunks rewritten -> (rewrite, ...); otherwise
    (None, (reason, detail)) of the first chunk that was not."""
    parts = sorted(parts, key=lambda j: j.index)
    failed = next((j for j in parts if "rewrite" not in (j.outcome or {})), None)
    if failed is not None:
        outcome = failed.outcome or {"failure": "llm_error", "detail": "no outcome"}
        where = f" (chunk {failed.index + 1}/{failed.of})" if failed.of > 1 else ""
        return None, (outcome["failure"], (outcome.get("detail") or "") + where)
    rewrites = [j.outcome["rewrite"] for j in parts]
    first = rewrites[0]
    rewrite = {
        **first,
        "text": reassemble([r["text"] for r in rewrites]),
        "attempts": max(r["attempts"] for r in rewrites),
        "output_tokens": sum(r["output_tokens"] for r in rewrites),
        "chunks": len(rewrites),
        "validators": first["validators"]
        if len(rewrites) == 1
        else json.dumps([json.loads(r["validators"]) for r in rewrites]),
    }
    return rewrite, ("", "")
