"""Every input record is accounted for: read as a document or flagged with a reason, whatever the file holds."""

import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl_bytes

from filters.records import RecordCheck
from rephrase.config import SourceConfig
from rephrase.inputs import ReadSources, build_readers, expand_source

GOOD = "Photosynthesis converts light energy into chemical energy stored in glucose. " * 5


def read_all(path: Path, tmp_path: Path, limit: int = -1) -> list:
    step = ReadSources(build_readers(SourceConfig(path=str(path)), str(path), limit, tmp_path / "paths"))
    return list(step.run(None, 0, 1))


def reasons(docs: list) -> dict[str, str]:
    return {d.metadata["record"]: d.metadata.get("bad_record") for d in docs}


def test_hostile_jsonl_every_line_has_a_fate(tmp_path: Path) -> None:
    path = write_jsonl_bytes(
        tmp_path / "in.jsonl",
        [
            json.dumps({"id": "ok", "text": GOOD}).encode(),
            b'{"id": "cut", "text": "no end',
            json.dumps({"id": "notext"}).encode(),
            json.dumps({"id": "empty", "text": "   "}).encode(),
            json.dumps({"id": "num", "text": 42}).encode(),
            b'{"id": "latin1", "text": "caf\xe9"}',
            b"",
            json.dumps([1, 2]).encode(),
            json.dumps({"text": GOOD + " no id"}).encode(),
            json.dumps({"id": "nul", "text": "a\x00" + GOOD}).encode(),
        ],
    )
    docs = read_all(path, tmp_path)
    assert reasons(docs) == {
        "in.jsonl:1": None,
        "in.jsonl:2": "malformed_json",
        "in.jsonl:3": "missing_text",
        "in.jsonl:4": "empty_text",
        "in.jsonl:5": "text_not_a_string",
        "in.jsonl:6": "invalid_utf8",
        "in.jsonl:8": "json_not_an_object",
        "in.jsonl:9": None,
        "in.jsonl:10": None,
    }
    assert next(d for d in docs if d.metadata["record"] == "in.jsonl:9").id == "in.jsonl:9"
    check = RecordCheck(max_doc_bytes=10_000)
    kept = list(check.run(iter(docs)))
    assert [d.id for d in kept] == ["ok", "in.jsonl:9", "nul"]
    assert "\x00" not in kept[2].text
    assert check.stats["dropped"].total + len(kept) == len(docs)


def test_huge_document_dropped_with_reason(tmp_path: Path) -> None:
    path = write_jsonl_bytes(tmp_path / "big.jsonl", [json.dumps({"id": "big", "text": "x" * 300_000}).encode()])
    docs = read_all(path, tmp_path)
    check = RecordCheck(max_doc_bytes=100_000)
    assert list(check.run(iter(docs))) == []
    assert check.stats["dropped_too_large"].total == 1


def test_truncated_gzip_keeps_what_came_before_and_reports_the_break(tmp_path: Path) -> None:
    data = gzip.compress(b"\n".join(json.dumps({"id": str(i), "text": GOOD}).encode() for i in range(200)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    docs = read_all(path, tmp_path)
    good = [d for d in docs if not d.metadata.get("bad_record")]
    bad = [d for d in docs if d.metadata.get("bad_record")]
    assert len(good) > 10 and len(bad) == 1 and bad[0].metadata["bad_record"].startswith("unreadable_file")


def test_parquet_missing_and_null_text(tmp_path: Path) -> None:
    table = pa.table({"id": ["a", "b", "c"], "text": [GOOD, None, ""]})
    pq.write_table(table, tmp_path / "x.parquet")
    docs = read_all(tmp_path / "x.parquet", tmp_path)
    assert [d.metadata.get("bad_record") for d in docs] == [None, "missing_text", "empty_text"]


def test_warc_non_html_and_undecodable_records_are_reported(tmp_path: Path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path = tmp_path / "x.warc.gz"
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for uri, ctype, body in [
            ("http://a.example/", "text/html", b"<html><body><p>" + GOOD.encode() + b"</p></body></html>"),
            ("http://b.example/x.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256))),
        ]:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.0")
            record = writer.create_warc_record(
                uri,
                "response",
                payload=io.BytesIO(body),
                http_headers=headers,
                warc_headers_dict={"WARC-Identified-Payload-Type": ctype},
            )
            writer.write_record(record)
    docs = read_all(path, tmp_path)
    assert [d.metadata.get("bad_record") for d in docs] == [None, "warc_not_html_or_undecodable"]
    assert docs[0].metadata["content_type"] == "html" and "<p>" in docs[0].text


def test_folder_and_glob_expansion(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for name in ("a/1.jsonl", "2.jsonl.gz", "3.parquet", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [Path(p).name for p in expand_source(str(tmp_path))] == ["2.jsonl.gz", "3.parquet", "1.jsonl"]
    assert [Path(p).name for p in expand_source(str(tmp_path / "**/*.jsonl"))] == ["1.jsonl"]


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="matches no readable file"):
        build_readers(SourceConfig(path="x"), str(tmp_path / "nothing"), -1, tmp_path)


def test_fsspec_urls_are_listed_and_read_like_local_files(tmp_path: Path, wiki_texts: list[str]) -> None:
    """`hf://datasets/...` cannot be reached here; any fsspec URL takes the same path (listing here, reading in
    datatrove's readers), so an in-memory filesystem stands in for the Hub."""
    import json

    import fsspec

    from rephrase.config import load_config
    from rephrase.run import run_config

    fs = fsspec.filesystem("memory")
    for part in range(2):
        rows = [
            json.dumps({"id": f"m{part}-{i}", "text": t}) for i, t in enumerate(wiki_texts[part * 3 : part * 3 + 3])
        ]
        fs.pipe(f"/corpus/part{part}.jsonl", ("\n".join(rows) + "\n").encode())
    fs.pipe("/corpus/notes.txt", b"not an input")
    files = expand_source("memory://corpus/*")
    assert [f.rsplit("/", 1)[-1] for f in files] == ["part0.jsonl", "part1.jsonl"] and files[0].startswith("memory:")
    assert expand_source("memory://corpus/") == files
    cfg = load_config(
        Path(__file__).resolve().parent.parent / "configs" / "demo.yaml",
        ["routing.rules=[{action: keep}]", "mix.synthetic_share=null", "language.enabled=false"],
        {"input.sources": [{"path": "memory://corpus/"}], "run.output": str(tmp_path / "out")},
    )
    result = run_config(cfg)
    assert sorted(r["record"] for r in result.read_ledger()) == [
        f"part{p}.jsonl:{i}" for p in range(2) for i in (1, 2, 3)
    ]
    assert sum(r["fate"] == "kept" for r in result.read_ledger()) >= 4
