"""Overlap the CPU steps of a task with generation, so the GPU does not wait on reading and filtering.

datatrove chains a task's steps as generators: while the LLM stage waits for `engine.generate`, nothing reads,
extracts or scores the next documents, and while it pulls its next batch the GPU idles. vLLM's engine runs in its
own process, so the waiting thread holds no GIL: running the upstream steps in a background thread, up to
`depth` documents ahead, lets them work during generation. Order is kept and errors surface in the task, as if the
steps had run inline; the thread stops when the task stops consuming.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

_END = object()


class Prefetch(PipelineStep):
    name = "prefetch"
    type = "⏩ - PREFETCH"

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.depth = depth

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        if data is None:
            return
        if self.depth <= 0:
            yield from data
            return
        ahead: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item: object) -> bool:
            """False once the consumer has stopped: the thread must not block forever on a full queue."""
            while not stop.is_set():
                try:
                    ahead.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for doc in data:
                    if not put(doc):
                        return
                put(_END)
            except BaseException as e:  # raised in the task's thread, where datatrove expects it
                put(e)

        thread = threading.Thread(target=produce, name="rephrase-prefetch", daemon=True)
        thread.start()
        try:
            while (item := ahead.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
