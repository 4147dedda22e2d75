"""Figures a task counts while it streams, merged once every task is done: the way a global stage learns global
totals without anyone holding global rows.

A tally is a set of named tables, each a counter from a string key to a number (tokens per pool and hash bin,
rows per fate, tokens per input file). Each task saves its own file (`<folder>/<rank>.json`, written atomically,
so a killed task leaves the old file or none); `merge` adds them up. Memory is bounded by the number of distinct
keys (pools, bins, fates, input files), never by the number of rows.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path


class Tally:
    def __init__(self) -> None:
        self.tables: defaultdict[str, Counter] = defaultdict(Counter)

    def add(self, table: str, key: str, value: float = 1) -> None:
        self.tables[table][key] += value

    def save(self, folder: str | Path, rank: int) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{rank:05d}.json.tmp"
        tmp.write_text(json.dumps({name: dict(table) for name, table in self.tables.items()}))
        os.replace(tmp, folder / f"{rank:05d}.json")


def merge(folder: str | Path) -> defaultdict[str, Counter]:
    """Every task's tables added up; a table no task saved is an empty Counter."""
    total: defaultdict[str, Counter] = defaultdict(Counter)
    for path in sorted(Path(folder).glob("*.json")):
        for name, table in json.loads(path.read_text()).items():
            total[name].update(table)
    return total
