"""datatrove readers that account for every input record.

datatrove's readers skip what they cannot parse: a malformed JSONL line is logged and dropped, a record without
text is warned about once and then skipped silently, one invalid UTF-8 byte aborts the rest of a file, and a WARC
response that is not decodable HTML vanishes. rephrase promises one ledger row per input record, so these readers
turn every such record into a Document flagged with `metadata["bad_record"] = <reason>`; `RecordCheck` then drops
it with that reason into the ledger. Everything else is datatrove's own reading path.
"""

from __future__ import annotations

import glob
import hashlib
import os
import posixpath
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import JsonlReader, ParquetReader, WarcReader
from datatrove.pipeline.readers.warc import process_record

from rephrase.config import Config, SourceConfig

_MISSING = object()
FORMAT_SUFFIXES = {
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".ndjson", ".ndjson.gz"),
    "parquet": (".parquet",),
    "warc": (".warc", ".warc.gz", ".warc.zst"),
}


def bad_record(record: str, reason: str, doc_id: object = None) -> Document:
    """A placeholder Document for a record that could not become a real one; RecordCheck drops it with `reason`."""
    return Document(
        text="",
        id=str(doc_id) if isinstance(doc_id, (str, int)) else record,
        metadata={"record": record, "bad_record": reason},
    )


class _Accounted:
    """Mixin over a datatrove disk reader: a record without usable text becomes a flagged Document, not None."""

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
        document.metadata["record"] = record
        document.metadata.pop("file_path", None)
        return document


class AccountedJsonlReader(_Accounted, JsonlReader):
    """Reads bytes and decodes line by line, so a bad line costs that line only, with a reason."""

    def read_file(self, filepath: str) -> DocumentsPipeline:
        line_no = 0
        try:
            with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
                for line_no, raw in enumerate(f, start=1):
                    if not raw.strip():
                        self.stat_update("blank_lines")
                        continue
                    with self.track_time():
                        doc = self._parse(raw, filepath, line_no)
                    yield doc
        except (EOFError, OSError, zlib.error) as e:
            # truncated gzip/zstd: everything before is kept, the break itself gets a ledger row
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
    pass


class AccountedWarcReader(_Accounted, WarcReader):
    """Like datatrove's WarcReader, but a response that is not decodable HTML is reported instead of skipped."""

    def read_file(self, filepath: str) -> DocumentsPipeline:
        from warcio.archiveiterator import ArchiveIterator

        ri = -1
        try:
            with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
                for ri, record in enumerate(ArchiveIterator(f)):
                    if record.rec_type not in ("response", "conversion"):
                        continue  # requests, warcinfo and metadata records are not documents
                    with self.track_time():
                        data = process_record(record)
                    if data is None:
                        yield bad_record(f"{filepath}:{ri + 1}", "warc_not_html_or_undecodable")
                        continue
                    doc = self.get_document_from_dict(data, filepath, ri)
                    doc.metadata["content_type"] = "html"
                    yield doc
        except (EOFError, OSError, zlib.error, ValueError) as e:
            self.stat_update("truncated_files")
            yield bad_record(f"{filepath}:{ri + 2}", f"unreadable_file:{type(e).__name__}")


READERS = {"jsonl": AccountedJsonlReader, "parquet": AccountedParquetReader, "warc": AccountedWarcReader}


def detect_format(path: str) -> str | None:
    name = path.lower()
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    return None


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _expand_url(path: str) -> list[str]:
    """The same for fsspec URLs (`hf://datasets/org/name/data/*.parquet`, `s3://...`): datatrove's readers open
    them through fsspec, so only the listing is needed here."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    if any(ch in root for ch in "*?["):
        found = fs.glob(root)
    elif fs.isdir(root):
        found = fs.find(root)
    else:
        found = [root] if fs.exists(root) else []
    return sorted(fs.unstrip_protocol(f) for f in found if detect_format(f) and fs.isfile(f))


def expand_source(path: str) -> list[str]:
    """Files named by a file, a glob or a folder (recursively), sorted so every task sees the same order."""
    if is_url(path):
        return _expand_url(path)
    if any(ch in path for ch in "*?[") and not os.path.exists(path):  # `[red]forum.jsonl` is a name, not a glob
        files = glob.glob(path, recursive=True)
    elif os.path.isdir(path):
        files = [str(p) for p in Path(path).rglob("*") if p.is_file()]
    else:
        files = [path] if os.path.exists(path) else []
    return sorted(f for f in files if os.path.isfile(f) and detect_format(f))


def resolve_input_path(cfg: Config, path: str) -> str:
    """A source path as the readers take it: `bundled:sample/<file>` is built (once) from registry packages."""
    if path.startswith("bundled:sample/"):
        from rephrase.sample_data import ensure_sample

        return str(ensure_sample() / path.removeprefix("bundled:sample/"))
    return cfg.resolve(path)


def build_readers(source: SourceConfig, path: str, limit: int, paths_dir: Path) -> list[PipelineStep]:
    """One datatrove reader per format present in `path`, each restricted to exactly the matched files.

    The file list is written to a paths file under the run's work folder, so every task shards the same list;
    a resumed run lists again, and a list that changed restarts curate (rephrase.resume).
    """
    files = expand_source(path)
    if not files:
        raise FileNotFoundError(
            f"input {path!r} matches no readable file (.jsonl[.gz], .parquet, .warc[.gz]); check the path"
        )
    by_format: dict[str, list[str]] = {}
    for f in files:
        fmt = detect_format(f) if source.format == "auto" else source.format
        by_format.setdefault(fmt, []).append(f)
    readers = []
    for fmt, fmt_files in by_format.items():
        if is_url(path):
            protocol = fmt_files[0].split("://", 1)[0] + "://"
            root = protocol + posixpath.commonpath([posixpath.dirname(f.split("://", 1)[1]) for f in fmt_files])
        else:
            root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in fmt_files])
        paths_file = _paths_file(paths_dir, root, fmt_files)
        readers.append(
            READERS[fmt](
                root,
                paths_file=paths_file,
                limit=limit,
                text_key=source.text_key,
                id_key=source.id_key,
            )
        )
    return readers


def _paths_file(paths_dir: Path, root: str, files: list[str]) -> str:
    if is_url(root):
        rel = [f.removeprefix(root).lstrip("/") for f in files]
    else:
        rel = [os.path.relpath(os.path.abspath(f), root) for f in files]
    digest = hashlib.sha1((root + "\n" + "\n".join(rel)).encode()).hexdigest()[:16]
    paths_dir.mkdir(parents=True, exist_ok=True)
    target = paths_dir / f"paths-{digest}.txt"
    target.write_text("\n".join(rel) + "\n", encoding="utf-8")
    return str(target)


class ReadSources(PipelineStep):
    """Chains the readers of every configured source; each reader shards its own files across tasks."""

    name = "read"
    type = "📖 - READER"

    def __init__(self, readers: list[PipelineStep]) -> None:
        super().__init__()
        self.readers = readers

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for reader in self.readers:
            for doc in reader.run(None, rank, world_size):
                self.stat_update("total")
                if doc.metadata.get("bad_record"):
                    self.stat_update(f"bad_{doc.metadata['bad_record'].split(':')[0]}")
                yield doc
