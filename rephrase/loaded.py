"""Models loaded once per process and shared by every task it runs. datatrove runs several tasks in one process
(a Slurm job's ranks one after another, a local worker's next rank), and each task used to load its tokenizer
and its validators' models again (about 2 s on this CPU; far more for a large tokenizer on a network filesystem).
Everything here is only read after loading, and a process runs one task at a time."""

from __future__ import annotations

import functools
import os


@functools.cache
def tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def fasttext_model(path: str):
    """Keyed by the file's mtime and size too: `rephrase train-classifier` may rewrite a classifier in place."""
    stat = os.stat(path)
    return _fasttext_model(str(path), stat.st_mtime_ns, stat.st_size)


@functools.cache
def _fasttext_model(path: str, mtime_ns: int, size: int):
    import fasttext

    return fasttext.load_model(path)


@functools.cache
def encoder(path: str) -> tuple:
    """(tokenizer, model in eval mode) of a sentence-embedding model folder."""
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
