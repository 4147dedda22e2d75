"""`rephrase report`: the HTML page made from a real run (bundled model through vLLM on CPU), checked as a file and
as Chromium renders it: every section is there, the pairs table holds 20 real pairs, and the screenshot is not
blank. Chromium is a system package (`apt-get install -y chromium`); without it only the browser checks skip
(or fail, under REPHRASE_REQUIRE_SERVICES=1 as in CI)."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import missing_service, write_jsonl_bytes

from rephrase.config import load_config
from rephrase.report_html import PAIRS, write_report
from rephrase.run import run_config

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("funnel", "quality", "generation", "lengths", "throughput", "pairs")
GERMAN = "Die Photosynthese wandelt Lichtenergie in chemische Energie um. " * 5
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def chromium() -> str:
    """Asked for before `report`, so a machine without Chromium skips (or fails) before the run is made."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        missing_service("chromium is not installed (apt-get install -y chromium)")
    return found


@pytest.fixture(scope="session")
def report(tmp_path_factory: pytest.TempPathFactory, wiki_texts: list[str]) -> Path:
    """One small real run: 26 Wikipedia leads, a malformed line, a German page and a duplicate, plus 6 crawled pages.

    One candidate of at most 160 tokens per document keeps generation near a minute on CPU; without the
    not_truncated check (a 160-token cap truncates often) nearly every lead gets a rewrite, enough for 20 pairs."""
    tmp = tmp_path_factory.mktemp("report")
    lines = [json.dumps({"id": f"w{i}", "text": t}).encode() for i, t in enumerate(wiki_texts[:26])]
    lines += [
        b'{"id": "cut", "text": "no end',
        json.dumps({"id": "de", "text": GERMAN}).encode(),
        json.dumps({"id": "w0-copy", "text": wiki_texts[0]}).encode(),
    ]
    src = write_jsonl_bytes(tmp / "docs.jsonl", lines)
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        [
            "rephrase.sampling.n=1",
            "rephrase.sampling.max_tokens=160",
            "rephrase.validators=[{use: length_ratio}, {use: no_meta_text}, {use: not_a_copy}]",
            "mix.synthetic_share=null",
        ],
        {
            "input.sources": [{"path": str(src)}, {"path": "bundled:sample/web.warc.gz", "limit": 6}],
            "run.output": str(tmp / "out"),
        },
    )
    return write_report(run_config(cfg).layout.out)


class _Collect(HTMLParser):
    """Section ids and, per table class, the number of body rows; enough to check structure without a browser."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.pair_rows = 0
        self.svgs = 0
        self.fetches: list[str] = []  # anything the browser would load: scripts, stylesheets, images, frames
        self._in_pairs = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id") or "")
        self._in_pairs = self._in_pairs or (tag == "table" and a.get("class") == "pairs")
        self.pair_rows += self._in_pairs and tag == "td" and a.get("class") == "meta"
        self.svgs += tag == "svg"
        self.fetches += [f"{tag} {k}={v}" for k, v in attrs if k in ("src", "href", "srcset", "data")]
        self.fetches += [tag] if tag in ("script", "link", "iframe", "object", "embed") else []

    def handle_endtag(self, tag: str) -> None:
        self._in_pairs = self._in_pairs and tag != "table"


def parse(html: str) -> _Collect:
    collect = _Collect()
    collect.feed(html)
    return collect


def test_report_is_self_contained_and_complete(report: Path) -> None:
    html = report.read_text(encoding="utf-8")
    page = parse(html)
    assert page.sections == list(SECTIONS)
    assert page.pair_rows == PAIRS
    assert page.svgs >= 4  # quality, lengths, length ratio, task timeline
    assert page.fetches == []  # self-contained: opens offline (document text is escaped, so it adds no tags)
    stats = json.loads((report.parent / "stats.json").read_text())
    assert f"{stats['llm']['candidates_accepted']}/{stats['llm']['candidates_generated']}" in html
    shown = [r["id"] for r in pq.read_table(report.parent / "work" / "docs").to_pylist()]
    assert sum(f">{doc_id} · " in html for doc_id in shown) >= PAIRS  # pairs name their source documents


def test_report_renders_in_chromium(chromium: str, report: Path, tmp_path: Path) -> None:
    from PIL import Image, ImageStat

    flags = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,3000",
    ]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    page = parse(dom.stdout)
    assert page.sections == list(SECTIONS) and page.pair_rows == PAIRS, dom.stderr[-2000:]

    png = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={png}", report.as_uri()], capture_output=True, timeout=120, check=True)
    image = Image.open(png).convert("L")
    assert image.size == (1400, 3000)
    histogram = image.histogram()
    background = max(histogram) / sum(histogram)
    assert background < 0.9 and ImageStat.Stat(image).stddev[0] > 15  # text, tables and charts, not a blank page


def test_document_text_is_escaped_not_rendered(report: Path, tmp_path: Path) -> None:
    """Web text carries markup; in the report it must stay text. The real run's first document gets some."""
    import pyarrow as pa
    from markupsafe import escape

    out = tmp_path / "out"
    shutil.copytree(report.parent, out)
    docs = sorted((out / "work" / "docs").glob("*.parquet"))[0]
    rows = pq.read_table(docs).to_pylist()
    hostile = '<script>alert("x")</script><img src="http://example.com/x.png"> & {{ 7 * 7 }}'
    first = next(r for r in rows if json.loads(r["meta"])["rewrites"])
    first["text"] = hostile + first["text"]
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(docs)), docs)
    html = write_report(out).read_text(encoding="utf-8")
    assert parse(html).fetches == []
    assert str(escape(hostile)) in html and "&lt;script&gt;" in html  # shown as text, first in the first pair
