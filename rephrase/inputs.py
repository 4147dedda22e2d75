"""Which files a source names, which reader reads each, and the step that chains them.

The readers themselves (rephrase.readers) turn every record into a Document or a flagged placeholder with a
reason; this module lists the files, shards them through a paths file, and counts what the readers read.
"""

from __future__ import annotations

import glob
import hashlib
import os
import posixpath
import threading
from collections.abc import Iterator
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger
from fsspec.implementations.local import LocalFileSystem

from rephrase.config import Config, SourceConfig
from rephrase.readers import READERS, BoundedReader, read_limit, records_in_shard

FORMAT_SUFFIXES = {
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".ndjson", ".ndjson.gz"),
    "parquet": (".parquet",),
    "warc": (".warc", ".warc.gz", ".warc.zst"),
}


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


def build_readers(
    source: SourceConfig, path: str, limit: int, paths_dir: Path, *, max_doc_bytes: int
) -> list[PipelineStep]:
    """One datatrove reader per format present in `path`, each restricted to exactly the matched files, and each
    that can bound its reads reading no record past `read_limit(max_doc_bytes)` (rephrase.readers).

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
        reader = READERS[fmt]
        bound = {"read_limit": read_limit(max_doc_bytes)} if issubclass(reader, BoundedReader) else {}
        paths_file = _paths_file(paths_dir, root, fmt_files)
        readers.append(
            reader(root, paths_file=paths_file, limit=limit, text_key=source.text_key, id_key=source.id_key, **bound)
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
    """Chains the readers of every configured source; each reader shards its own files across tasks.

    `total` counts the records read (the ledger's completeness check compares its rows with it); each reader's own
    counters (blank lines, truncated files, skipped WARC record types) are merged in, since the executor only
    saves the stats of the steps in the pipeline, and these readers run inside this one. `records_read` and
    `records_total` (counted beside the reading, None until known) are how far the task is through its input: the
    LLM stage's ETA when it cannot know how many documents will reach it.
    """

    name = "read"
    type = "📖 - READER"

    def __init__(self, readers: list[PipelineStep]) -> None:
        super().__init__()
        self.readers = readers
        self.prefixes = record_prefixes(readers)
        self.records_read, self.records_total = 0, None

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        self.records_read, self.records_total = 0, None
        threading.Thread(target=self._count, args=(rank, world_size), name="rephrase-count", daemon=True).start()
        for reader, prefix in zip(self.readers, self.prefixes, strict=True):
            for doc in reader.run(None, rank, world_size):
                if prefix:
                    doc.metadata["record"] = prefix + doc.metadata["record"]
                self.stat_update("total")
                self.records_read += 1
                if doc.metadata.get("bad_record"):
                    self.stat_update(f"bad_{doc.metadata['bad_record'].split(':')[0]}")
                yield doc
            self.stats.stats = self.stats.stats + reader.stats.stats

    def _count(self, rank: int, world_size: int) -> None:
        """`records_total`, this task's records, counted beside the reading (line breaks, WARC headers, parquet
        footers: no parsing) so the LLM stage can give an ETA from the input; remote inputs are not read twice."""
        if any(not isinstance(r.data_folder.fs, LocalFileSystem) for r in self.readers):
            return
        try:
            self.records_total = sum(records_in_shard(r, rank, world_size) for r in self.readers)
        except Exception as e:  # the reading itself reports a broken file; the ETA just stays unknown
            logger.warning(f"input records not counted, so no ETA: {type(e).__name__}: {e}")


def busy_tasks(readers: list[PipelineStep], tasks: int) -> int:
    """How many of `tasks` get any input: datatrove deals each reader's files to the tasks one by one and never
    splits a file, so a source of 1 file keeps 1 task busy however many run (and so do the stages after curate,
    which work shard by shard of curate's output)."""
    files = [len(Path(r.paths_file).read_text(encoding="utf-8").splitlines()) for r in readers]
    return min(tasks, max(files, default=0))


def record_prefixes(readers: list) -> list[str]:
    """What goes before each reader's records (`file:line`, relative to the reader's folder) so that no two
    readers name a record alike: nothing while their file names differ (one source keeps `part-0.jsonl:3`), else
    each reader's folder relative to the folders' common root (`cc/part-0.jsonl:3`, `wiki/part-0.jsonl:3`; a file
    name both hold would be one file, read twice), or the source's position across filesystems. The record is the
    row's identity in the dataset and the ledger, so a collision would pair one document's outcome with another's.
    A file named by two sources would be read twice: refused."""
    names = [set(Path(r.paths_file).read_text(encoding="utf-8").split()) for r in readers]
    roots = [(str(r.data_folder.fs.protocol), r.data_folder.path) for r in readers]
    seen: dict[tuple, int] = {}
    for i, ((protocol, root), files) in enumerate(zip(roots, names, strict=True)):
        for f in files:
            if seen.setdefault((protocol, posixpath.normpath(posixpath.join(root, f))), i) != i:
                raise ValueError(f"input file {f} (in {root}) is named by two input sources: it would be read twice")
    if all(a.isdisjoint(b) for i, a in enumerate(names) for b in names[i + 1 :]):
        return [""] * len(readers)
    if len({protocol for protocol, _ in roots}) > 1:
        return [f"source{i}/" for i in range(len(readers))]
    common = posixpath.commonpath([root for _, root in roots])
    return ["" if (rel := posixpath.relpath(root, common)) == "." else f"{rel}/" for _, root in roots]
