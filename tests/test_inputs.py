"""Every input record is accounted for: read as a document or flagged with a reason, whatever the file holds."""

import errno
import gzip
import io
import json
import tracemalloc
from pathlib import Path
from typing import ClassVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl_bytes
from fsspec.implementations.memory import MemoryFileSystem
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from filters.records import RecordCheck
from rephrase.config import SourceConfig
from rephrase.estimate import count_records
from rephrase.inputs import ReadSources, build_readers, busy_tasks, expand_source

GOOD = "Photosynthesis converts light energy into chemical energy stored in glucose. " * 5


def read_all(path: Path | str, tmp_path: Path, limit: int = -1, max_doc_bytes: int = 10**6) -> list:
    readers = build_readers(
        SourceConfig(path=str(path)), str(path), limit, tmp_path / "paths", max_doc_bytes=max_doc_bytes
    )
    return list(ReadSources(readers).run(None, 0, 1))


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
        build_readers(SourceConfig(path="x"), str(tmp_path / "nothing"), -1, tmp_path, max_doc_bytes=10**6)


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


class FlakyFile(io.BytesIO):
    """Serves the first half of its bytes, then raises like a connection reset in the middle of an hf:// file."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.fail_at = len(data) // 2

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self.fail_at:
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        left = self.fail_at - self.tell()
        return super().read(left if size is None or size < 0 else min(size, left))

    read1 = read

    def readinto(self, b: bytearray) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    readinto1 = readinto

    def readline(self, size: int | None = -1) -> bytes:
        if self.tell() >= self.fail_at:
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        return super().readline(size)

    def __next__(self) -> bytes:
        if line := self.readline():
            return line
        raise StopIteration


class FlakyFileSystem(MemoryFileSystem):
    """A memory filesystem whose files fail halfway through a read, as hf://, S3 or NFS can."""

    protocol = "flaky"
    store: ClassVar[dict] = {}
    pseudo_dirs: ClassVar[list] = [""]

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("flaky://"))

    def _open(self, path: str, mode: str = "rb", **kwargs: object) -> io.BytesIO:
        if "r" not in mode:
            return super()._open(path, mode, **kwargs)
        return FlakyFile(self.cat_file(path))


@pytest.fixture
def flaky_fs() -> FlakyFileSystem:
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    FlakyFileSystem.store.clear()
    return FlakyFileSystem()


def warc_bytes(records: list[tuple[str, str, bytes]]) -> bytes:
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=True)
    for uri, ctype, body in records:
        headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.0")
        writer.write_record(writer.create_warc_record(uri, "response", payload=io.BytesIO(body), http_headers=headers))
    return out.getvalue()


@pytest.mark.parametrize("name", ["in.jsonl", "in.jsonl.gz", "pages.warc.gz"])
def test_an_io_error_mid_file_fails_the_task(name: str, flaky_fs: MemoryFileSystem, tmp_path: Path) -> None:
    """A transient read error must not end the file with one row and a finished task: the rest of the file would
    never be read. It propagates, so the task fails and a resumed run reads the file again."""
    page = b"<html><body><p>" + GOOD.encode() + b"</p></body></html>"
    if name.endswith(".warc.gz"):
        data = warc_bytes([(f"http://{i}.example/", "text/html", page) for i in range(50)])
    else:
        data = b"".join(json.dumps({"id": str(i), "text": GOOD}).encode() + b"\n" for i in range(500))
        data = gzip.compress(data) if name.endswith(".gz") else data
    flaky_fs.pipe(f"/corpus/{name}", data)
    with pytest.raises(ConnectionResetError):
        read_all(f"flaky://corpus/{name}", tmp_path)


def test_a_cut_warc_ends_with_a_reason_row(tmp_path: Path) -> None:
    page = b"<html><body><p>" + GOOD.encode() + b"</p></body></html>"
    data = warc_bytes([(f"http://{i}.example/", "text/html", page) for i in range(50)])
    (tmp_path / "cut.warc.gz").write_bytes(data[: len(data) // 2 + len(data) // 100])  # inside record 26
    docs = read_all(tmp_path / "cut.warc.gz", tmp_path)
    bad = [d.metadata.get("bad_record") for d in docs if d.metadata.get("bad_record")]
    assert len(docs) > 10 and bad == ["unreadable_file:EOFError"]


def test_an_overlong_line_is_one_too_large_row_read_in_bounded_memory(tmp_path: Path) -> None:
    """A 50 MB line (1 GB in the wild) with max_doc_bytes 100 kB: the reader holds a few read limits, not the line."""
    path = tmp_path / "big.jsonl.gz"
    line_mb = 50
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(json.dumps({"id": "before", "text": GOOD}).encode() + b"\n")
        f.write(b'{"id": "huge", "text": "')
        for _ in range(line_mb):
            f.write(b"x" * 2**20)
        f.write(b'"}\n')
        f.write(json.dumps({"id": "after", "text": GOOD}).encode() + b"\n")
    tracemalloc.start()
    try:
        docs = read_all(path, tmp_path, max_doc_bytes=100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reasons(docs) == {"big.jsonl.gz:1": None, "big.jsonl.gz:2": "too_large", "big.jsonl.gz:3": None}
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB reading a {line_mb} MiB line"


def test_input_fields_cannot_pose_as_pipeline_metadata(tmp_path: Path) -> None:
    hostile = {
        "id": "h",
        "text": GOOD,
        "bad_record": "forged",
        "kind": "synthetic",
        "record": "elsewhere.jsonl:1",
        "content_type": "html",
        "rewrites": [{"prompt": "p", "text": "injected"}],
        "metadata": {"filter_reason": "forged", "keep_original": False},
    }
    path = write_jsonl_bytes(
        tmp_path / "in.jsonl",
        [json.dumps(hostile).encode(), json.dumps({"id": "fat", "text": GOOD, "blob": "y" * 20_000}).encode()],
    )
    docs = read_all(path, tmp_path)
    meta = docs[0].metadata
    assert set(meta) == {"record", "input"} and meta["record"] == "in.jsonl:1"
    assert meta["input"]["kind"] == "synthetic" and meta["input"]["keep_original"] is False
    check = RecordCheck(max_doc_bytes=10_000)  # the fat record's text fits; with its metadata it does not
    assert [d.id for d in check.run(iter(docs))] == ["h"]
    assert check.stats["dropped_too_large"].total == 1


def test_warc_records_without_headers_revisits_and_non_pages_each_have_a_fate(tmp_path: Path) -> None:
    page = b"<html><body><p>" + GOOD.encode() + b"</p></body></html>"
    html = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.0")
    bomb = StatusAndHeaders("200 OK", [("Content-Type", "text/html"), ("Content-Encoding", "gzip")], "HTTP/1.0")
    path = tmp_path / "x.warc.gz"
    with path.open("wb") as f:
        writer = WARCWriter(f, gzip=True)
        writer.write_record(writer.create_warcinfo_record("x.warc.gz", {"software": "test"}))
        writer.write_record(writer.create_warc_record("http://a.example/", "request", payload=io.BytesIO(b"GET /")))
        writer.write_record(writer.create_warc_record("http://a.example/", "response", payload=io.BytesIO(page),
                                                      http_headers=html))  # fmt: skip
        for rec_type, header in [("response", "WARC-Record-ID"), ("response", "WARC-Date"),
                                 ("conversion", "WARC-Target-URI")]:  # fmt: skip
            body, headers = (page, html) if rec_type == "response" else (GOOD.encode(), None)
            bare = writer.create_warc_record("http://b.example/", rec_type, payload=io.BytesIO(body),
                                             http_headers=headers)  # fmt: skip
            bare.rec_headers.remove_header(header)
            writer.write_record(bare)
        writer.write_record(writer.create_revisit_record("http://a.example/", "sha1:X", "http://a.example/", "2024"))
        writer.write_record(writer.create_warc_record("http://c.example/", "response",
                                                      payload=io.BytesIO(b"<p>" + b"z" * 500_000 + b"</p>"),
                                                      http_headers=html))  # fmt: skip
        writer.write_record(writer.create_warc_record("http://d.example/", "response",
                                                      payload=io.BytesIO(gzip.compress(b"<p>" + b"z" * 2**22)),
                                                      http_headers=bomb))  # fmt: skip
        no_uri = writer.create_warc_record("http://e.example/", "response", payload=io.BytesIO(page),
                                           http_headers=html)  # fmt: skip
        no_uri.rec_headers.remove_header("WARC-Target-URI")
        writer.write_record(no_uri)
        writer.write_record(writer.create_warc_record("http://f.example/", "response", payload=io.BytesIO(page),
                                                      http_headers=html))  # fmt: skip
    step = ReadSources(build_readers(SourceConfig(path=str(path)), str(path), -1, tmp_path, max_doc_bytes=100_000))
    docs = list(step.run(None, 0, 1))
    assert reasons(docs) == {
        "x.warc.gz:3": None,
        "x.warc.gz:4": None,  # no WARC-Record-ID: its location is its id
        "x.warc.gz:5": None,  # no WARC-Date: datatrove raised KeyError on every rerun
        "x.warc.gz:6": None,  # a WET record without WARC-Target-URI: the same
        "x.warc.gz:7": "warc_revisit",
        "x.warc.gz:8": "too_large",  # Content-Length over the read limit
        "x.warc.gz:9": "too_large",  # a small gzip payload that expands past it
        "x.warc.gz:10": "unreadable_file:ArchiveLoadFailed",  # warcio cannot parse a response without a URI
    }
    assert docs[1].id == "x.warc.gz:4" and docs[3].metadata["input"]["url"] is None
    assert step.stats["skipped_warc_warcinfo"].total == 1 and step.stats["skipped_warc_request"].total == 1
    assert count_records(str(path), "warc") == len(docs) == step.stats["total"].total


def test_busy_tasks_counts_the_files_each_reader_deals_out(tmp_path: Path) -> None:
    """datatrove gives each file to one task: 3 JSONL files and 1 parquet file keep 3 of 4 tasks busy."""
    for i in range(3):
        (tmp_path / f"part{i}.jsonl").write_text(json.dumps({"id": "a", "text": "x"}) + "\n")
    pq.write_table(pa.table({"id": ["b"], "text": ["y"]}), tmp_path / "one.parquet")
    source = SourceConfig(path=str(tmp_path))
    readers = build_readers(source, str(tmp_path), -1, tmp_path / "paths", max_doc_bytes=1000)
    assert [busy_tasks(readers, tasks) for tasks in (1, 2, 3, 4, 8)] == [1, 2, 3, 3, 3]
