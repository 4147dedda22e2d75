"""datatrove readers that account for every input record, in memory bounded by the record size cap.

datatrove's readers skip what they cannot parse: a malformed JSONL line is logged and dropped, a record without
text is warned about once and then skipped silently, one invalid UTF-8 byte aborts the rest of a file, and a WARC
response that is not decodable HTML vanishes. rephrase promises one ledger row per input record, so these readers
turn every such record into a Document flagged with `metadata["bad_record"] = <reason>`; `RecordCheck` then drops
it with that reason into the ledger. Three more promises than datatrove makes:

- Bounded reads. A JSONL line or a WARC payload is read at most `read_limit(max_doc_bytes)` bytes; a longer one
  is skipped a chunk at a time and becomes one `too_large` row, so a 1 GB line costs a few max_doc_bytes of memory.
- A broken file is not a broken read. A compressed stream that ends early or is corrupt fails the same way on
  every rerun, so it ends its file with one `unreadable_file:<error>` row. Any other OSError (a transient read
  error on hf://, S3, NFS) propagates: the task fails and a resumed run reads the file again, instead of the rest
  of the file vanishing behind one row.
- Input fields never pose as pipeline metadata. Everything in a record but its text and id lands under
  `metadata["input"]`, so a field named `bad_record`, `kind`, `record` or `rewrites` is data, not an instruction.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import orjson
import zstandard
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers import JsonlReader, ParquetReader, WarcReader
from warcio.exceptions import ArchiveLoadFailed

if TYPE_CHECKING:
    from datatrove.pipeline.base import PipelineStep
    from warcio.recordloader import ArcWarcRecord

_MISSING = object()
READ_LIMIT_FACTOR = 4
"""Raw bytes read per byte of `max_doc_bytes`. JSON escapes a text (é as \\u00e9 is 6 bytes for UTF-8's 2, an
astral character 12 for 4) and HTML wraps a page's main text in markup, so the raw record of a document that fits
the cap can be a few times larger; 4x keeps those, and a reader's memory at a few max_doc_bytes."""
SKIP_CHUNK = 1 << 20
"""Bytes read at a time while skipping the rest of an overlong line."""
TRUNCATED = (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError)
"""What a cut or corrupt gzip/zstd stream raises: the same on every rerun, so the file ends with a reason row."""
WARC_DOCUMENT_TYPES = ("response", "conversion")
"""WARC record types that hold a page (`conversion`: WET text)."""
WARC_ROW_TYPES = (*WARC_DOCUMENT_TYPES, "revisit")
"""WARC record types with a ledger row. A revisit is a fetch of a page whose payload is an earlier record's, so it
is dropped as `warc_revisit`; requests, warcinfo and metadata describe a crawl, not a page, and are counted skips."""
PAGE_TYPES = ("text/html", "application/xhtml+xml")
NOT_A_PAGE = "warc_not_html_or_undecodable"


def read_limit(max_doc_bytes: int) -> int:
    return READ_LIMIT_FACTOR * max_doc_bytes


def bad_record(record: str, reason: str, doc_id: object = None) -> Document:
    """A placeholder Document for a record that could not become a real one; RecordCheck drops it with `reason`."""
    return Document(
        text="",
        id=str(doc_id) if isinstance(doc_id, (str, int)) else record,
        metadata={"record": record, "bad_record": reason},
    )


def bounded_lines(f: io.BufferedReader, limit: int) -> Iterator[bytes | None]:
    """Each line of `f` with its newline, or None for a line longer than `limit` bytes, whose rest is skipped
    SKIP_CHUNK bytes at a time: memory stays at `limit` plus the buffers, however long the line."""
    while line := f.readline(limit + 1):
        if line.endswith(b"\n") or len(line) <= limit:
            yield line
            continue
        while (rest := f.readline(SKIP_CHUNK)) and not rest.endswith(b"\n"):
            pass
        yield None


class _Accounted:
    """Mixin over a datatrove disk reader: a record without usable text becomes a flagged Document, not None, and
    the record's fields other than text and id go under `metadata["input"]`, beside the pipeline's own keys."""

    text_key: str
    id_key: str

    def get_document_from_dict(self, data: dict, source_file: str, id_in_file: int | str) -> Document:
        line = id_in_file + 1 if isinstance(id_in_file, int) else id_in_file
        record = f"{source_file}:{line}"
        text = data.get(self.text_key, _MISSING)
        doc_id = data.get(self.id_key)
        if text is _MISSING or text is None:
            return bad_record(record, "missing_text", doc_id)
        if not isinstance(text, str):
            return bad_record(record, "text_not_a_string", doc_id)
        if not text.strip():
            return bad_record(record, "empty_text", doc_id)
        if self.id_key not in data or not isinstance(doc_id, (str, int)):
            data[self.id_key] = record
        else:
            data[self.id_key] = str(doc_id)
        document = super().get_document_from_dict(data, source_file, id_in_file)
        document.metadata.pop("file_path", None)
        document.metadata = {"record": record, "input": document.metadata}
        return document


class BoundedReader(_Accounted):
    """A reader that reads no record past `read_limit` bytes (see READ_LIMIT_FACTOR)."""

    def __init__(self, *args: object, read_limit: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.read_limit = read_limit


class AccountedJsonlReader(BoundedReader, JsonlReader):
    """Reads bytes and decodes line by line, so a bad line costs that line only, with a reason.

    The stream is wrapped in an io.BufferedReader for `readline(limit)`: fsspec's remote files take no limit and
    zstandard's reader has no readline at all.
    """

    def read_file(self, filepath: str) -> DocumentsPipeline:
        line_no = 0
        try:
            with (
                self.data_folder.open(filepath, "rb", compression=self.compression) as raw,
                io.BufferedReader(raw) as f,
            ):
                for line_no, line in enumerate(bounded_lines(f, self.read_limit), start=1):
                    if line is None:
                        yield bad_record(f"{filepath}:{line_no}", "too_large")
                    elif not line.strip():
                        self.stat_update("blank_lines")
                    else:
                        with self.track_time():
                            doc = self._parse(line, filepath, line_no)
                        yield doc
        except TRUNCATED as e:
            # everything before the break is kept, the break itself gets a ledger row
            self.stat_update("truncated_files")
            yield bad_record(f"{filepath}:{line_no + 1}", f"unreadable_file:{type(e).__name__}")

    def _parse(self, raw: bytes, filepath: str, line_no: int) -> Document:
        record = f"{filepath}:{line_no}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return bad_record(record, "invalid_utf8")
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            return bad_record(record, "malformed_json")
        if not isinstance(data, dict):
            return bad_record(record, "json_not_an_object")
        data.pop("media", None)
        return self.get_document_from_dict(data, filepath, line_no - 1)


class AccountedParquetReader(_Accounted, ParquetReader):
    """pyarrow reads a cell whole, so a parquet record is bounded by its row group, not by `read_limit`."""


class AccountedWarcReader(BoundedReader, WarcReader):
    """Like datatrove's WarcReader, but every page-like record has a fate and no payload is read past the limit.

    A file the archive reader cannot parse (cut, corrupt, not a WARC) ends with a reason row, like a cut gzip.
    """

    def read_file(self, filepath: str) -> DocumentsPipeline:
        ri = -1
        try:
            with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
                for ri, record in enumerate(_archive_records(f)):
                    where = f"{filepath}:{ri + 1}"
                    if record.rec_type == "revisit":
                        yield bad_record(where, "warc_revisit")
                        continue
                    if record.rec_type not in WARC_DOCUMENT_TYPES:
                        self.stat_update(f"skipped_warc_{record.rec_type}")
                        continue
                    with self.track_time():
                        page = warc_page(record, self.read_limit)
                    if isinstance(page, str):
                        yield bad_record(where, page)
                        continue
                    doc = self.get_document_from_dict(page, filepath, ri)
                    doc.metadata["content_type"] = "html"
                    yield doc
        except (*TRUNCATED, ArchiveLoadFailed, ValueError) as e:
            self.stat_update("truncated_files")
            yield bad_record(f"{filepath}:{ri + 2}", f"unreadable_file:{type(e).__name__}")


def _archive_records(f: io.IOBase) -> Iterator[ArcWarcRecord]:
    """warcio's records, where any error parsing a record's headers is ArchiveLoadFailed: warcio raises
    AttributeError for a response without WARC-Target-URI, which would fail the task on every rerun. The stream's
    own errors (a cut gzip, a transient OSError) pass as they are."""
    from warcio.archiveiterator import ArchiveIterator

    records = ArchiveIterator(f)
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except (OSError, *TRUNCATED, ArchiveLoadFailed):
            raise
        except Exception as e:  # warcio's parser raises whatever the bytes lead it to
            raise ArchiveLoadFailed(f"{type(e).__name__}: {e}") from e
        yield record


def _is_page(mime: str, rec_type: str) -> bool:
    return mime in PAGE_TYPES or (rec_type == "conversion" and mime == "text/plain")


def _decode(content: bytes) -> str | None:
    """UTF-8, else the charset cchardet detects; None when neither decodes."""
    import cchardet

    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        charset = cchardet.detect(content)["encoding"]
    if not charset or charset.lower().replace("-", "") == "utf8":
        return None
    try:
        return content.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return None


def warc_page(record: ArcWarcRecord, limit: int) -> dict | str:
    """datatrove's `process_record` with bounds and without crashes: the page's fields, or why there is none.

    Content-Length is checked before reading, and the read itself stops at `limit` + 1 bytes, since a gzip
    Content-Encoding can expand a payload past its Content-Length. Missing headers are None: datatrove falls back
    to ARC's `uri`/`archive-date` with a KeyError that fails the task on every rerun, and a page without
    WARC-Record-ID takes its location as id like any other record without one.
    """
    import magic

    headers = record.rec_headers
    mime = headers.get_header("WARC-Identified-Payload-Type")
    if mime is not None and not _is_page(mime, record.rec_type):
        return NOT_A_PAGE
    if record.length is not None and int(record.length) > limit:
        return "too_large"
    content = record.content_stream().read(limit + 1)
    if len(content) > limit:
        return "too_large"
    if mime is None and not _is_page(magic.from_buffer(content, mime=True), record.rec_type):
        return NOT_A_PAGE  # older crawls have no payload type
    html = _decode(content)
    if html is None:
        return NOT_A_PAGE
    return {
        "text": html,
        "id": headers.get_header("WARC-Record-ID"),
        "url": headers.get_header("WARC-Target-URI") or headers.get_header("uri"),
        "date": headers.get_header("WARC-Date") or headers.get_header("archive-date"),
    }


def count_rows(f: io.RawIOBase, fmt: str) -> int:
    """The rows the jsonl or warc reader gives a file, counted from line breaks or record headers alone, in the
    same bounded memory (rephrase estimate). A file that ends in a break counts its break row, like the reader; a
    WARC cut inside a page's payload counts that page too, one more than the reader, which never saw it whole."""
    rows = 0
    try:
        if fmt == "jsonl":  # blank lines are not records for the reader either
            for line in bounded_lines(io.BufferedReader(f), SKIP_CHUNK):
                rows += line is None or bool(line.strip())
        else:
            for record in _archive_records(f):
                rows += record.rec_type in WARC_ROW_TYPES
    except (*TRUNCATED, ArchiveLoadFailed, ValueError):
        rows += 1
    return rows


def count_records(f: io.RawIOBase, fmt: str) -> int:
    """Records the reader of `fmt` yields from an open binary file: the parquet footer, else count_rows."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(f).metadata.num_rows
    return count_rows(f, fmt)


READERS = {"jsonl": AccountedJsonlReader, "parquet": AccountedParquetReader, "warc": AccountedWarcReader}


def records_in_shard(reader: PipelineStep, rank: int, world_size: int) -> int:
    """Records one task's reader will yield (its share of the files, within its limit), counted without parsing."""
    from datatrove.io import get_shard_from_paths_file

    fmt = next(name for name, cls in READERS.items() if isinstance(reader, cls))
    compression = None if fmt == "parquet" else reader.compression
    total = 0
    for path in get_shard_from_paths_file(reader.paths_file, rank, world_size):
        with reader.data_folder.open(path, "rb", compression=compression) as f:
            total += count_records(f, fmt)
    return total if reader.limit < 0 else min(total, reader.limit)
