"""Every kind of bad record in one real run: the run finishes and each record has exactly one ledger row.

The routing keeps everything, so no model loads; what is under test is reading, extraction, the input checks,
language id and the heuristics on hostile bytes, and the ledger's accounting.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from rephrase.config import load_config
from rephrase.run import PreflightError, run_config

REPO = Path(__file__).resolve().parent.parent


def hostile_jsonl(path: Path, leads: list[str]) -> int:
    lead = leads[0]
    lines = [
        json.dumps({"id": "good", "text": lead}).encode(),
        b'{"id": "broken", "text": "no closing quote',
        b'{"id": "bad-utf8", "text": "caf\xe9 \xff"}',
        json.dumps({"id": "no-text", "body": lead}).encode(),
        json.dumps({"id": "not-a-string", "text": {"nested": lead}}).encode(),
        json.dumps({"id": "empty", "text": "   "}).encode(),
        json.dumps({"id": "nul", "text": leads[1].replace(" ", "\x00 ", 3)}).encode(),
        json.dumps({"id": "huge", "text": (lead + "\n\n") * (3_000_000 // len(lead))}).encode(),
        json.dumps({"id": "one-word", "text": "x" * 300_000}).encode(),
        json.dumps({"id": "html", "text": f"<html><body><nav>Home</nav><p>{leads[2]}</p></body></html>"}).encode(),
        json.dumps({"id": "../../etc/passwd", "text": leads[3]}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return len(lines)


def truncated_gzip(path: Path, leads: list[str]) -> None:
    rows = b"".join(json.dumps({"id": f"gz{i}", "text": lead}).encode() + b"\n" for i, lead in enumerate(leads))
    data = gzip.compress(rows)
    path.write_bytes(data[: len(data) * 2 // 3])


def broken_warc(path: Path, lead: str) -> int:
    pages = [
        ("http://ok.example/", "text/html; charset=utf-8", f"<html><body><p>{lead}</p></body></html>".encode()),
        (
            "http://liar.example/",
            "text/html; charset=utf-8",
            b"<html><body><p>caf\xe9 \xff\xfe " + lead.encode()[:400] + b"</p></body></html>",
        ),
        ("http://img.example/x.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256))),
    ]
    with path.open("wb") as f:
        writer = WARCWriter(f, gzip=True)
        for uri, ctype, body in pages:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.0")
            writer.write_record(
                writer.create_warc_record(uri, "response", payload=io.BytesIO(body), http_headers=headers)
            )
    return len(pages)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, wiki_texts: list[str]):
    tmp = tmp_path_factory.mktemp("hostile")
    leads = [t for t in wiki_texts[:120] if len(t) > 600]
    n_jsonl = hostile_jsonl(tmp / "hostile.jsonl", leads[:4])
    truncated_gzip(tmp / "cut.jsonl.gz", leads[4:40])
    n_warc = broken_warc(tmp / "pages.warc.gz", leads[40])
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        ["mix.synthetic_share=null", "routing.rules=[{action: keep}]"],
        {
            "input.sources": [
                {"path": str(tmp / "hostile.jsonl")},
                {"path": str(tmp / "cut.jsonl.gz")},
                {"path": str(tmp / "pages.warc.gz")},
            ],
            "run.output": str(tmp / "out"),
        },
    )
    return run_config(cfg), n_jsonl, n_warc


def test_every_bad_record_has_one_ledger_row_with_a_reason(run) -> None:
    result, n_jsonl, n_warc = run
    ledger = pq.read_table(result.layout.ledger).to_pylist()
    for row in ledger:
        print(f"{row['record']:<40.40} {row['fate']:<9} {row['stage'] or '':<10} {row['reason'] or ''}")
    records = [r["record"] for r in ledger]
    assert len(records) == len(set(records))
    gz_rows = [r for r in ledger if r["record"].startswith("cut.jsonl.gz")]
    assert len(ledger) == n_jsonl + len(gz_rows) + n_warc
    by_id = {r["doc_id"]: r for r in ledger}
    expected = {
        "hostile.jsonl:2": "malformed_json",
        "hostile.jsonl:3": "invalid_utf8",
        "no-text": "missing_text",
        "empty": "empty_text",
        "huge": "too_large",
    }
    for doc_id, reason in expected.items():
        assert by_id[doc_id]["fate"] == "dropped" and by_id[doc_id]["reason"] == reason, by_id[doc_id]
    assert by_id["not-a-string"]["fate"] == "dropped" and by_id["not-a-string"]["reason"]
    assert by_id["one-word"]["fate"] == "dropped" and by_id["one-word"]["reason"]  # no words: heuristics drop it
    assert by_id["good"]["fate"] == "kept" and by_id["nul"]["fate"] == "kept", (by_id["good"], by_id["nul"])
    # the truncated gzip: the rows before the break are read, the break itself is a ledger row
    assert [r["reason"] for r in gz_rows if r["stage"] == "input"] == ["unreadable_file:EOFError"], gz_rows
    assert sum(r["fate"] == "kept" for r in gz_rows) >= 1
    warc = [r for r in ledger if r["record"].startswith("pages.warc.gz")]
    assert [r["fate"] for r in warc].count("dropped") >= 1
    for row in ledger:
        if row["fate"] == "dropped":
            assert row["stage"] and row["reason"], row


def test_kept_text_is_clean_and_hostile_ids_stay_data(run) -> None:
    result, _, _ = run
    rows = pq.read_table(result.layout.dataset / "data").to_pylist()
    assert rows and all("\x00" not in r["text"] for r in rows)
    html = next((r for r in rows if r["source_id"] == "html"), None)
    if html is not None:  # raw HTML in a text field is text: it is not extracted, but it is not lost either
        assert "<p>" in html["text"]
    out = result.layout.out.resolve()
    assert all(p.resolve().is_relative_to(out) for p in out.rglob("*"))
    assert not (out.parent / "etc").exists()


def test_unreadable_input_and_full_disk_fail_before_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from collections import namedtuple

    from rephrase.config import ConfigError

    missing = tmp_path / "nowhere" / "*.jsonl"
    with pytest.raises((FileNotFoundError, ConfigError), match="nowhere"):
        run_config(load_config(REPO / "configs" / "demo.yaml", [], {"input.sources": [{"path": str(missing)}],
                                                                    "run.output": str(tmp_path / "a")}))  # fmt: skip
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    cfg = load_config(REPO / "configs" / "demo.yaml", [], {"run.output": str(tmp_path / "b")})
    with pytest.raises(PreflightError, match=r"MiB free .* free space or choose --output"):
        run_config(cfg)
    assert not (tmp_path / "b" / "work").exists()
