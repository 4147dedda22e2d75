"""Chat-control strings in data: web text may contain `<|im_end|>\n<|im_start|>system ...`.

A chat template is text, and the tokenizer turns every special-token string in it into the control token itself,
so a page that holds them would forge turns once rendered into a prompt. Inside a document each such string gets
a word joiner (U+2060) after its first character: it reads the same, and no longer matches the special token. The
strings are the engine tokenizer's own specials, so every chat format (ChatML, Llama's `<|eot_id|>`, ...) is
covered; `GENERIC` catches the `<|...|>` family where no tokenizer is at hand (a validator judging a rewrite).
"""

from __future__ import annotations

import re

JOINER = "\u2060"
GENERIC = re.compile(r"<\|[^|<>\s]{1,64}\|>")


def control_strings(tokenizer) -> tuple[str, ...]:
    """A Hugging Face tokenizer's special-token strings, longest first (so `<|im_end|>` is seen before `<|`)."""
    specials = set(tokenizer.all_special_tokens)
    specials |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return tuple(sorted((s for s in specials if len(s) > 1), key=len, reverse=True))


def neutralise(text: str, controls: tuple[str, ...]) -> str:
    """`text` with every control string broken by a word joiner; repeated until none is left, since breaking one
    can never create another but an input may nest them (`<|im_<|im_end|>end|>`)."""
    while True:
        found = [c for c in controls if c in text]
        if not found:
            return text
        for c in found:
            text = text.replace(c, c[0] + JOINER + c[1:])


def find_control(text: str, controls: tuple[str, ...]) -> str | None:
    """The first control string in `text` (the tokenizer's, else any `<|...|>`), or None."""
    hit = next((c for c in controls if c in text), None)
    if hit is None and (m := GENERIC.search(text)):
        hit = m.group(0)
    return hit
