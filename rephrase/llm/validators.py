"""Checks on one candidate rewrite. Each validator has one reason code and a score, recorded per candidate.

Small rewriting models truncate, echo the prompt, chat about the task ("Here is the rewritten text"), refuse, or
copy the input back. Every such failure has a validator here; the thresholds are deliberately loose defaults meant
to be tuned per prompt from the run's per-validator stats.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

from rephrase.llm.control import find_control
from rephrase.llm.engine import Completion
from rephrase.registry import Registry


@dataclass(frozen=True)
class Verdict:
    ok: bool
    score: float
    reason: str | None = None  # set when not ok


class Validator(Protocol):
    """A check may also define `prepare(texts)`: called once per generation round, before any `__call__`, with
    the sources and candidates it will judge, so a model-backed check can batch its work. Such a check only
    judges candidates that passed every check without `prepare` (rephrase.llm.selection.select_round).
    A check may define `use_controls(controls)`: called once, before any `__call__`, with the engine tokenizer's
    special-token strings (rephrase.llm.control)."""

    name: str

    def __call__(self, source: str, candidate: Completion) -> Verdict: ...


VALIDATORS: Registry[Validator] = Registry("validator")


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


@VALIDATORS.register("not_truncated")
class NotTruncated(Validator):
    """A candidate cut by max_tokens ends mid-sentence; it would teach the model to stop anywhere."""

    name = "not_truncated"

    def __call__(self, source: str, candidate: Completion) -> Verdict:
        ok = candidate.finish_reason != "length"
        return Verdict(ok, 1.0 if ok else 0.0, None if ok else "truncated")


@VALIDATORS.register("length_ratio")
class LengthRatio(Validator):
    """Words of the rewrite over words of the source: too short drops content, too long invents it."""

    name = "length_ratio"

    def __init__(self, low: float = 0.3, high: float = 3.0) -> None:
        if not 0 < low < high:
            raise ValueError(f"length_ratio needs 0 < low < high, got low={low} high={high}")
        self.low, self.high = low, high

    def __call__(self, source: str, candidate: Completion) -> Verdict:
        ratio = len(_words(candidate.text)) / max(1, len(_words(source)))
        if ratio < self.low:
            return Verdict(False, ratio, "length_ratio_low")
        if ratio > self.high:
            return Verdict(False, ratio, "length_ratio_high")
        return Verdict(True, ratio)


_META_PATTERNS = [
    r"^\s*(sure|certainly|of course|okay|ok)\b[!,.:]",
    r"^\s*here(?: is|'s| are)\b[^\n]{0,80}\b(rewrit|rephras|version|text|section|summary|article|answer)",
    r"\bas an ai\b",
    r"\b(i'm sorry|i am sorry|i apologi[sz]e)\b",
    r"\bi (cannot|can't|can not|am unable to|won't) (help|assist|rewrite|provide|comply|do that)",
    r"\b(rewritten|rephrased) (text|version)\s*:",
    r"\bi hope this helps\b",
    r"\bthis is (a|the|my) (rewritten|rephrased|revised) (version|text)",
    r"\bi have (now )?(rewritten|rephrased|made (some )?changes|revised)",
    r"\b(in this|the) (rewritten|rephrased) (text|version)\b",
    r"\blet me know if\b",
]
_META = re.compile("|".join(f"(?:{p})" for p in _META_PATTERNS), re.IGNORECASE | re.MULTILINE)


@VALIDATORS.register("no_meta_text")
class NoMetaText(Validator):
    """Refusals, chatter about the task and leaked chat-control tokens are not pretraining text.

    A phrase the source itself contains ("I'm sorry to announce...") is not held against the rewrite, but only
    that phrase: a source with any meta text must not switch the check off, or a web page ending in "<|im_start|>"
    would let "Sure! Here is the rewritten text:" through. Chat-control tokens are never forgiven.
    """

    name = "no_meta_text"
    controls: tuple[str, ...] = ()

    def use_controls(self, controls: tuple[str, ...]) -> None:
        self.controls = controls

    def __call__(self, source: str, candidate: Completion) -> Verdict:
        if find_control(candidate.text, self.controls) is not None:  # anywhere in the text, whatever the format
            return Verdict(False, 0.0, "meta_text")
        head_and_tail = candidate.text[:300] + "\n" + candidate.text[-300:]
        for match in _META.finditer(head_and_tail):
            if match.group(0).strip().lower() not in source.lower():
                return Verdict(False, 0.0, "meta_text")
        return Verdict(True, 1.0)


@VALIDATORS.register("not_a_copy")
class NotACopy(Validator):
    """Share of the rewrite's word 5-grams found verbatim in the source: a copy adds nothing to the mix."""

    name = "not_a_copy"

    def __init__(self, max_overlap: float = 0.9, n: int = 5) -> None:
        self.max_overlap, self.n = max_overlap, n

    def __call__(self, source: str, candidate: Completion) -> Verdict:
        cand, src = _words(candidate.text), _words(source)
        grams = {tuple(cand[i : i + self.n]) for i in range(len(cand) - self.n + 1)}
        if not grams:
            return Verdict(True, 0.0)
        src_grams = {tuple(src[i : i + self.n]) for i in range(len(src) - self.n + 1)}
        overlap = len(grams & src_grams) / len(grams)
        ok = overlap <= self.max_overlap
        return Verdict(ok, overlap, None if ok else "copy_of_source")


@VALIDATORS.register("not_empty")
class NotEmpty(Validator):
    name = "not_empty"

    def __init__(self, min_words: int = 20) -> None:
        self.min_words = min_words

    def __call__(self, source: str, candidate: Completion) -> Verdict:
        n = len(_words(candidate.text))
        ok = n >= self.min_words
        return Verdict(ok, float(n), None if ok else "too_short")


def length_closeness(verdicts: dict[str, Verdict]) -> float:
    """Default ranking among passing candidates: length ratio closest to 1 (faithful size), then least copying."""
    ratio = verdicts["length_ratio"].score if "length_ratio" in verdicts else 1.0
    overlap = verdicts["not_a_copy"].score if "not_a_copy" in verdicts else 0.0
    return -abs(math.log(max(ratio, 1e-6))) - 0.5 * overlap


@VALIDATORS.register("no_repetition")
class NoRepetition(Validator):
    """Degenerate loops ("the the the", a sentence repeated) are the classic failure of small samplers. The share
    of characters inside repeated word n-grams is Gopher's repetition measure (datatrove's implementation)."""

    name = "no_repetition"

    def __init__(self, n: int = 5, max_fraction: float = 0.25) -> None:
        self.n, self.max_fraction = n, max_fraction

    def __call__(self, source: str, candidate: Completion) -> Verdict:
        from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate

        words = candidate.text.split()
        total = len("".join(words))
        fraction = find_all_duplicate(words, self.n) / total if total else 0.0
        ok = fraction <= self.max_fraction
        return Verdict(ok, fraction, None if ok else "repetition")


@VALIDATORS.register("same_language")
class SameLanguage(Validator):
    """A rewrite must stay in the source's language (small models drift into English or switch mid-text)."""

    name = "same_language"

    def __init__(self, min_score: float = 0.5) -> None:
        self.min_score = min_score
        self._model = None

    def _predict(self, text: str) -> tuple[str, float]:
        if self._model is None:
            from filters.language import lid176_path
            from rephrase.loaded import fasttext_model

            self._model = fasttext_model(lid176_path())
        labels, probs = self._model.predict(text.replace("\n", " "), k=1)
        return labels[0].removeprefix("__label__"), float(probs[0])

    def __call__(self, source: str, candidate: Completion) -> Verdict:
        src_lang, _ = self._predict(source)
        lang, prob = self._predict(candidate.text)
        ok = lang == src_lang and prob >= self.min_score
        return Verdict(ok, prob if lang == src_lang else 0.0, None if ok else "language_changed")


@VALIDATORS.register("quality_score")
class QualityScore(Validator):
    """The rewrite's fastText quality score must reach `min_score` and, if `not_below_source`, the source's own
    score minus `margin`: a rewrite that the quality classifier likes less than its source is not an upgrade."""

    name = "quality_score"

    def __init__(
        self,
        classifier: str = "bundled:quality_starter",
        label: str = "__label__hq",
        min_score: float = 0.0,
        not_below_source: bool = True,
        margin: float = 0.05,
    ) -> None:
        from filters.classifiers import resolve_classifier_path

        self.path, self.label = resolve_classifier_path(classifier), label
        self.min_score, self.not_below_source, self.margin = min_score, not_below_source, margin
        self._model = None

    def _score(self, text: str) -> float:
        from filters.train import normalize_for_fasttext

        if self._model is None:
            from rephrase.loaded import fasttext_model

            self._model = fasttext_model(self.path)
        labels, probs = self._model.predict(normalize_for_fasttext(text), k=-1)
        return float(dict(zip(labels, probs, strict=True)).get(self.label, 0.0))

    def __call__(self, source: str, candidate: Completion) -> Verdict:
        score = self._score(candidate.text)
        floor = max(self.min_score, self._score(source) - self.margin if self.not_below_source else 0.0)
        ok = score >= floor
        return Verdict(ok, score, None if ok else "quality_below_threshold")


@VALIDATORS.register("faithful")
class Faithful(Validator):
    """Cosine similarity of sentence embeddings (all-MiniLM-L6-v2, shipped offline) between source and rewrite.
    A small model's fluent rewrite can drift to another topic or invent a story; a faithful paraphrase of the
    same passage stays close in embedding space (a MiniLM paraphrase typically scores above 0.8)."""

    name = "faithful"

    def __init__(self, min_similarity: float = 0.6, model: str = "bundled:all-minilm-l6-v2") -> None:
        self.min_similarity, self.model = min_similarity, model
        self._embedder = None
        self._vectors: dict = {}

    def prepare(self, texts: list[str]) -> None:
        """Embed a whole round's sources and candidates in one batched call, each distinct text once (a source
        is shared by its n candidates). Embedding pairs one by one cost about 100 ms a candidate on CPU and made
        this check most of the stage's time outside the engine. Replaces the previous round's vectors."""
        self._vectors = {}
        unique = list(dict.fromkeys(texts))
        if unique:
            self._vectors = dict(zip(unique, self._encoder().encode(unique), strict=True))

    def _encoder(self):
        if self._embedder is None:
            from filters.semantic import Embedder

            self._embedder = Embedder(self.model)
        return self._embedder

    def _vector(self, text: str):
        vector = self._vectors.get(text)
        return vector if vector is not None else self._encoder().encode([text])[0]

    def __call__(self, source: str, candidate: Completion) -> Verdict:
        similarity = float(self._vector(source) @ self._vector(candidate.text))
        ok = similarity >= self.min_similarity
        return Verdict(ok, similarity, None if ok else "unfaithful")
