"""The prefetch step keeps order and errors, reads ahead while the consumer is busy, and stops when it stops."""

from __future__ import annotations

import threading

import pytest
from datatrove.data import Document

from rephrase.prefetch import Prefetch


def docs(n: int, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"bad document {i}")
        yield Document(text=f"text {i}", id=str(i))


def test_order_and_every_document_are_kept() -> None:
    assert [d.id for d in Prefetch(8).run(docs(100))] == [str(i) for i in range(100)]
    assert [d.id for d in Prefetch(0).run(docs(5))] == ["0", "1", "2", "3", "4"]


def test_an_upstream_error_reaches_the_task_after_the_documents_before_it() -> None:
    seen = []
    with pytest.raises(ValueError, match="bad document 7"):
        for d in Prefetch(4).run(docs(20, fail_at=7)):
            seen.append(d.id)
    assert seen == [str(i) for i in range(7)]


def test_upstream_works_while_the_consumer_is_busy_and_stops_with_it() -> None:
    """While the task holds one document, the thread reads `depth` more (and is then held by the full queue);
    closing the stream stops the thread, which reads nothing more."""
    produced = []
    ahead = threading.Event()

    def source():
        for i in range(1000):
            produced.append(i)
            if len(produced) == 1 + 16:  # the one the task holds and a full queue behind it
                ahead.set()
            yield Document(text="x", id=str(i))

    stream = Prefetch(16).run(source())
    next(stream)
    assert ahead.wait(timeout=60), f"the thread read only {len(produced)} documents while the task was busy"
    stream.close()
    for thread in threading.enumerate():
        if thread.name == "rephrase-prefetch":
            thread.join(timeout=60)  # a bound for a broken stop, not a measure: a stopped thread ends within 0.2 s
    assert not any(t.name == "rephrase-prefetch" and t.is_alive() for t in threading.enumerate())
    # at most one document past a full queue: the one the thread was holding when the task stopped
    assert len(produced) <= 1 + 16 + 1, "the producer kept reading after the task stopped"
