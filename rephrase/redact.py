"""Secrets out of what rephrase publishes or shows others: the dataset card, a spawned server's argv.

Two checks, both conservative in what they call a secret. `is_secret_name` judges a setting by its name (a config
key, an engine argument): `hf_token`, `api_key`, `db_password` are secrets; `max_num_batched_tokens`, `tokenizer`
and `text_key` are not, so names are split into words rather than searched for substrings. `redact` judges text
by its shape: URL userinfo (`https://user:pass@host`), `name=value` where the name is a secret name, `Bearer`
credentials, and the token formats of the services a run talks to (Hub `hf_...`, OpenAI `sk-...`, GitHub, AWS).
"""

from __future__ import annotations

import re

REDACTED = "<redacted>"

_SECRET_NAME = re.compile(
    r"(?:^|[_.-])(?:token|secret|password|passwd|pwd|credentials?)(?:$|[_.-])|(?:api|access|private|secret)[_.-]?key$"
)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_ASSIGNMENT = re.compile(r"\b([A-Za-z][\w.-]*)=([^\s&;,'\"]+)")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[\w.~+/-]+=*")
_TOKENS = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}|AKIA[0-9A-Z]{16})\b"
)


def is_secret_name(name: str) -> bool:
    """A name one of whose words (split at `_`, `-`, `.`) is token, secret, password, credentials..., or that
    ends in api/access/private/secret key: `HF_TOKEN`, `hf_token`, `OPENAI_API_KEY`, `apikey`."""
    return _SECRET_NAME.search(name.lower()) is not None


def redact(text: str) -> str:
    """`text` with every credential-shaped part replaced by `<redacted>`; the rest is left as it was."""
    text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    text = _ASSIGNMENT.sub(lambda m: f"{m[1]}={REDACTED}" if is_secret_name(m[1]) else m[0], text)
    text = _BEARER.sub(rf"\1{REDACTED}", text)
    return _TOKENS.sub(REDACTED, text)
