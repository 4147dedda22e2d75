"""RephraseStep logic with a scripted engine: resampling only for failed documents, checkpoint replay after a
rerun, engine errors retried. The real engines are exercised in test_engines.py and test_pipeline.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datatrove.data import Document
from stage_steps import wikipedia_step

from rephrase.config import SamplingConfig, ValidatorConfig
from rephrase.llm.engine import Completion, Generation, resolved
from rephrase.llm.stage import RephraseStep

SOURCE = (
    "The Danube is the second-longest river in Europe. It flows through Central and Eastern Europe from the Black "
    "Forest into the Black Sea and passes through ten countries, more than any other river in the world."
)
GOOD = (
    "Europe's second-longest river, the Danube, runs from Germany's Black Forest to the Black Sea. Along its "
    "course it crosses ten countries, which is more than any other river on Earth."
)


class ScriptedEngine:
    """Answers from a script: per submit, per conversation, a list of candidate texts (or an error string).
    The stage submits one sampling per conversation (each capped by its input's length)."""

    model_id, model_revision = "scripted", ""

    def __init__(self, script: list[list[list[str] | str]]) -> None:
        self.script, self.calls = list(script), []

    def submit(self, conversations, n, sampling):
        return [resolved(g) for g in self.generate(conversations, n, sampling)]

    def generate(self, conversations, n, sampling):
        self.calls.append((len(conversations), sampling[0].temperature))
        self.ns = [*getattr(self, "ns", []), n]
        answers = self.script.pop(0)
        return [
            Generation(error=a) if isinstance(a, str) else Generation([Completion(t, "stop", 40) for t in a])
            for a in answers
        ]

    def close(self) -> None:
        pass


def make_step(tmp_path: Path, engine: ScriptedEngine, sampling: SamplingConfig | None = None) -> RephraseStep:
    sampling = sampling or SamplingConfig(n=2, resample_rounds=1)
    validators = ["length_ratio", "not_a_copy"]
    return wikipedia_step(
        tmp_path / "ckpt", sampling=sampling, validators=validators, batch_size=8, engine=lambda: engine
    )


def docs() -> list[Document]:
    return [
        Document(
            text=SOURCE, id=f"d{i}", metadata={"record": f"f:{i}", "action": "rephrase", "prompts": ["wikipedia"]}
        )
        for i in range(3)
    ] + [Document(text=SOURCE + " kept", id="k", metadata={"record": "f:9", "action": "keep", "prompts": []})]


def test_resample_only_failed_documents_then_checkpoint_replay(tmp_path) -> None:
    engine = ScriptedEngine(
        [
            [[GOOD, SOURCE], [SOURCE, SOURCE], "server said 503"],  # d1 all copies, d2 engine error
            [[GOOD, "tiny"]],  # resample round for d1 only
        ]
    )
    out = list(make_step(tmp_path, engine).run(iter(docs())))
    assert engine.calls == [(3, 0.7), (1, pytest.approx(0.8))]
    d0, d1, d2, k = out
    assert d0.metadata["rewrites"][0]["attempts"] == 1 and d1.metadata["rewrites"][0]["attempts"] == 2
    assert d2.metadata["rephrase_failures"][0]["reason"] == "llm_error"
    assert k.metadata["rewrites"] == [] and k.metadata["n_tokens"] > 0

    # rerun of the task: finished outcomes replay, only the engine error goes back to the model
    engine2 = ScriptedEngine([[[GOOD, GOOD]]])
    step2 = make_step(tmp_path, engine2)
    out2 = list(step2.run(iter(docs())))
    assert engine2.calls == [(1, 0.7)]
    assert step2.stats["replayed_from_checkpoint"].total == 2
    assert [len(d.metadata["rewrites"]) for d in out2] == [1, 1, 1, 0]
    assert out2[1].metadata["rewrites"][0]["text"] == GOOD


def test_all_rounds_failing_records_the_reasons(tmp_path) -> None:
    engine = ScriptedEngine([[[SOURCE, "x"]] * 3, [[SOURCE, SOURCE]] * 3])
    out = list(make_step(tmp_path, engine).run(iter(docs()[:3])))
    reasons = out[0].metadata["rephrase_failures"][0]["reason"].split(",")
    assert set(reasons) == {"copy_of_source", "length_ratio_low"} and reasons[0] == "copy_of_source"


def test_long_document_chunks_rewritten_and_reassembled_in_order(tmp_path) -> None:
    paragraphs = [f"Section {i}. " + SOURCE for i in range(6)]
    doc = Document(
        text="\n\n".join(paragraphs),
        id="long",
        metadata={"record": "f:1", "action": "rephrase", "prompts": ["wikipedia"]},
    )

    class EchoEngine(ScriptedEngine):
        """Rewrites each chunk as 'Part <first words>' so the order of reassembly is visible."""

        def generate(self, conversations, n, sampling):
            self.calls.append((len(conversations), sampling[0].temperature))
            out = []
            for conv in conversations:
                chunk = conv[-1]["content"].split("Text:")[-1].strip()
                sections = [p.split(".")[0] for p in chunk.split("\n\n")]
                out.append(Generation([Completion(" ".join(f"{s}: {GOOD}" for s in sections), "stop", 50)] * n))
            return out

    step = make_step(tmp_path, EchoEngine([]))
    step.chunk_tokens = 120
    (out,) = list(step.run(iter([doc])))
    rewrite = out.metadata["rewrites"][0]
    assert rewrite["chunks"] > 1 and step.stats["chunks"].total == rewrite["chunks"]
    order = [int(w) for w in __import__("re").findall(r"Section (\d+):", rewrite["text"])]
    assert order == list(range(6))
    assert len(json.loads(rewrite["validators"])) == rewrite["chunks"]


def test_document_over_hard_limit_is_not_rewritten(tmp_path) -> None:
    doc = Document(
        text=SOURCE * 20, id="huge", metadata={"record": "f:1", "action": "rephrase", "prompts": ["wikipedia"]}
    )
    engine = ScriptedEngine([])
    step = make_step(tmp_path, engine)
    step.max_doc_tokens = 100
    (out,) = list(step.run(iter([doc])))
    assert out.metadata["rephrase_failures"][0]["reason"] == "too_long" and engine.calls == []


def test_adaptive_resampling_draws_more_only_for_failed_documents(tmp_path) -> None:
    """n=1 first; only the failed document gets resample_n=3 more candidates, in one request."""
    engine = ScriptedEngine([[[GOOD], [SOURCE], [GOOD]], [[SOURCE, "tiny", GOOD]]])
    listed = docs()[:3]
    for doc, bucket in zip(listed, (2, 7, 7), strict=True):
        doc.metadata["quality_bucket"] = bucket
    step = make_step(tmp_path, engine, SamplingConfig(n=1, resample_rounds=1, resample_n=3))
    out = list(step.run(iter(listed)))
    assert engine.calls == [(3, 0.7), (1, pytest.approx(0.8))] and engine.ns == [1, 3]
    assert [len(d.metadata["rewrites"]) for d in out] == [1, 1, 1]
    rewrite = out[1].metadata["rewrites"][0]
    assert (rewrite["attempts"], rewrite["candidate_index"], json.loads(rewrite["sampling"])["n"]) == (2, 2, 3)
    assert step.stats["candidates"].total == 3 + 3
    assert step.stats["prompt_accepted_wikipedia"].total == 3
    assert (step.stats["bucket_accepted_2"].total, step.stats["bucket_accepted_7"].total) == (1, 2)


def test_acceptance_is_counted_per_prompt_and_bucket(tmp_path) -> None:
    engine = ScriptedEngine([[[GOOD, GOOD], [SOURCE, SOURCE], [GOOD, SOURCE]], [[SOURCE, SOURCE]]])
    listed = docs()[:3]
    for doc in listed:
        doc.metadata["quality_bucket"] = 4
    step = make_step(tmp_path, engine)
    list(step.run(iter(listed)))
    stats = step.stats
    for key in ("prompt_{}_wikipedia", "bucket_{}_4"):
        assert [stats[key.format(o)].total for o in ("attempted", "accepted", "failed")] == [3, 2, 1]


def test_summary_reports_acceptance_per_prompt_and_bucket_with_chunks(tmp_path) -> None:
    """What stats.json shows under llm.by_prompt / llm.by_bucket, from the step's own counters; the long
    document counts once as a document and once per chunk, and the task's last log line says the same."""
    from datatrove.utils.logging import logger

    from rephrase.stats import acceptance

    # one submit for the two short documents and the long one's two chunks (each capped by its length); d1 resampled
    engine = ScriptedEngine([[[GOOD, GOOD], [SOURCE, SOURCE], [GOOD, GOOD], [GOOD, SOURCE]], [[SOURCE, SOURCE]]])
    long = Document(
        text=f"Section 1. {SOURCE}\n\nSection 2. {SOURCE}",
        id="long",
        metadata={"record": "f:5", "action": "rephrase", "prompts": ["wikipedia"], "quality_bucket": 3},
    )
    listed = [*docs()[:2], long]
    listed[0].metadata["quality_bucket"] = listed[1].metadata["quality_bucket"] = 4
    step = make_step(tmp_path, engine)
    step.chunk_tokens = 60
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        list(step.run(listed))
    finally:
        logger.remove(sink)
    counters = {k: v.total for k, v in step.stats.stats.items()}
    assert acceptance(counters, "prompt") == {
        "wikipedia": {"attempted": 3, "accepted": 2, "acceptance": 0.6667, "chunks_attempted": 4, "chunks_accepted": 3}
    }
    assert acceptance(counters, "bucket") == {
        "3": {"attempted": 1, "accepted": 1, "acceptance": 1.0, "chunks_attempted": 2, "chunks_accepted": 2},
        "4": {"attempted": 2, "accepted": 1, "acceptance": 0.5, "chunks_attempted": 2, "chunks_accepted": 1},
    }
    summary = [line for line in lines if line.startswith("rephrase [task 0]")]
    assert len(summary) == 1 and "3 documents, 2/3 rewrites accepted (66.7%), 400 output tokens" in summary[0]


def test_a_torn_checkpoint_line_is_cut_so_the_next_entry_survives(tmp_path) -> None:
    """A kill mid-write leaves half a line; appending after it would glue the next entry to it and lose both."""
    from rephrase.llm.checkpoint import GenerationLog

    path = tmp_path / "00000.jsonl"
    path.write_text('{"key": "a", "outcome": {"failure": "x"}}\n{"key": "b", "outc')
    log = GenerationLog(path)
    assert log.get("a") == {"failure": "x"} and log.get("b") is None
    log.put("c", {"failure": "y"})
    log.close()
    reread = GenerationLog(path)
    assert (len(reread), reread.get("c")) == (2, {"failure": "y"})


def test_requests_join_the_running_engine_without_waiting_for_a_call_to_end(tmp_path) -> None:
    """The engine must not idle at call boundaries. This engine answers some requests only once the stage has sent
    another: document 1's first candidate waits until document 0's resample was submitted (a failed document is
    resampled while the rest of its batch still generates), and that resample waits until the next batch was
    submitted (a batch is read while the engine still holds the last one). A stage that waited for whole calls
    would hang here."""
    import threading
    from concurrent.futures import Future

    submitted: list[tuple[int, float]] = []
    waits_for = {(1, 0.7): (0, 0.8), (0, 0.8): (2, 0.7)}  # request (document, temperature) -> submit it waits for
    held: list[tuple[tuple[int, float], Future, Generation]] = []

    class Engine(ScriptedEngine):
        def submit(self, conversations, n, sampling):
            futures = []
            for conversation, s in zip(conversations, sampling, strict=True):
                key = (next(i for i in range(4) if f"marker{i}." in conversation[-1]["content"]), s.temperature)
                submitted.append(key := (key[0], round(key[1], 2)))
                text = SOURCE if key == (0, 0.7) else f"{GOOD} marker{key[0]}."  # d0 fails at first
                futures.append(Future())
                held.append((waits_for.get(key, key), futures[-1], Generation([Completion(text, "stop", 40)])))
            for entry in [h for h in held if h[0] in submitted]:
                held.remove(entry)
                entry[1].set_result(entry[2])
            return futures

    step = make_step(tmp_path, Engine([]), SamplingConfig(n=1, resample_rounds=1))
    step.batch_size = 2
    batch = [
        Document(
            text=f"{SOURCE} marker{i}.",
            id=f"d{i}",
            metadata={"record": f"f:{i}", "action": "rephrase", "prompts": ["wikipedia"]},
        )
        for i in range(4)
    ]
    out: list[Document] = []
    worker = threading.Thread(target=lambda: out.extend(step.run(iter(batch))), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), f"the stage waited for a call to end; submitted: {submitted}"
    assert submitted == [(0, 0.7), (1, 0.7), (2, 0.7), (3, 0.7), (0, 0.8)]
    assert [d.id for d in out] == ["d0", "d1", "d2", "d3"]
    assert [d.metadata["rewrites"][0]["attempts"] for d in out] == [2, 1, 1, 1]


def test_tasks_of_one_process_load_the_models_once(tmp_path, monkeypatch) -> None:
    """datatrove runs several ranks in one process (a Slurm job's ranks, a local worker's next task): the second
    task reuses the tokenizer, lid.176 and MiniLM the first one loaded, and its checks give the same verdicts."""
    import fasttext
    import transformers

    from rephrase import loaded

    loads: list[str] = []
    for owner, attr in ((transformers.AutoModel, "from_pretrained"), (transformers.AutoTokenizer, "from_pretrained")):
        real = getattr(owner, attr)
        monkeypatch.setattr(
            owner, attr, lambda *a, _real=real, _name=owner.__name__, **k: loads.append(_name) or _real(*a, **k)
        )
    real_ft = fasttext.load_model
    monkeypatch.setattr(fasttext, "load_model", lambda path: loads.append("fasttext") or real_ft(path))
    for cache in (loaded.tokenizer, loaded._fasttext_model, loaded.encoder):
        cache.cache_clear()

    outs = []
    for rank in (0, 1):
        step = make_step(tmp_path / str(rank), ScriptedEngine([[[GOOD], [GOOD], [GOOD]]]))
        step.validator_configs = [ValidatorConfig(use="same_language"), ValidatorConfig(use="faithful")]
        outs.append(list(step.run(iter(docs()), rank=rank)))
    # the stage's tokenizer, MiniLM's tokenizer and model, lid.176: each loaded by the first task only
    assert sorted(loads) == ["AutoModel", "AutoTokenizer", "AutoTokenizer", "fasttext"]
    scores = [[d.metadata["rewrites"][0]["validators"] for d in out if d.metadata["rewrites"]] for out in outs]
    assert len(scores[0]) == 3 and scores[0] == scores[1]


def test_an_engine_that_dies_keeps_what_it_finished(tmp_path) -> None:
    """A dead engine (its loop failed) fails the futures it held: the task stops with that error, but the
    rewrites that came back in the same round are judged and checkpointed first, so the rerun does not redo them."""
    from concurrent.futures import Future

    class Dying(ScriptedEngine):
        def submit(self, conversations, n, sampling):
            dead: Future = Future()
            dead.set_exception(RuntimeError("engine core died"))
            return [resolved(Generation([Completion(GOOD, "stop", 40)])), dead, dead]

    step = make_step(tmp_path, Dying([]))
    with pytest.raises(RuntimeError, match="engine core died"):
        list(step.run(iter(docs())))
    engine2 = ScriptedEngine([[[GOOD, GOOD], [GOOD, GOOD]]])
    step2 = make_step(tmp_path, engine2)
    out = list(step2.run(iter(docs())))
    assert engine2.calls == [(2, 0.7)] and step2.stats["replayed_from_checkpoint"].total == 1
    assert [len(d.metadata["rewrites"]) for d in out] == [1, 1, 1, 0]
