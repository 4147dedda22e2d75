"""Finished generations survive a kill: an append-only JSONL log per task, read back when the task reruns.

datatrove restarts an unfinished task from scratch (its output files are rewritten, so nothing is duplicated);
without this log that would also redo every LLM call the task had already paid for. Each line is one finished
(document, prompt) outcome keyed by everything that determines it: the record, its text, the prompt's content hash,
the model, the sampling settings and the validators. A line cut short by a kill is ignored on reading.
Engine errors are never logged, so those documents are retried when the task runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def outcome_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]


class GenerationLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        if path.is_file():
            data = path.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]
            for raw in whole.splitlines():
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                self.entries[entry["key"]] = entry["outcome"]
            if len(whole) < len(data):  # the torn last line of a killed run: cut, or the next line would join it
                with path.open("r+b") as f:
                    f.truncate(len(whole))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, outcome: dict) -> None:
        self.entries[key] = outcome
        self._file.write(json.dumps({"key": key, "outcome": outcome}, ensure_ascii=False) + "\n")

    def commit(self) -> None:
        """Make what was put durable; called once per generation call, so a kill loses at most one batch."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self.commit()
        self._file.close()
