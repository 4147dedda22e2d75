"""The stages after curate at any task count: the same result from one task or many, rows named by their input
record (not by input ids, which files share: a row's id is its record, the input id stays in `source_id`), and a
ledger that must account for every record read.

The LLM is tests/fake_llm.py through the real `vllm-server` engine, so runs can be compared row for row.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_llm import FakeLLM, run_updates

from rephrase.config import load_config
from rephrase.layout import COUNT, EXACT, FINALIZE, LEDGER, MINHASH, ROWS
from rephrase.ledger import LedgerIncomplete
from rephrase.run import RunResult, run_config

REPO = Path(__file__).resolve().parent.parent


def outputs(result: RunResult) -> tuple[list[dict], list[dict]]:
    key = lambda r: json.dumps(r, sort_keys=True, default=str)  # noqa: E731
    rows = pq.read_table(result.layout.dataset_data).to_pylist()
    return sorted(rows, key=key), sorted(result.read_ledger(), key=key)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, wiki_texts: list[str]) -> Path:
    """Three files whose ids all run 0, 1, 2, ...; the first text of each file appears once more elsewhere."""
    folder = tmp_path_factory.mktemp("scale-in")
    texts = [t for t in wiki_texts if len(t) > 400][:24]
    for part in range(3):
        rows = [{"id": i, "text": t} for i, t in enumerate(texts[part::3])]
        rows.append({"id": len(rows), "text": texts[(part + 1) % 3]})  # an exact copy of another file's first text
        (folder / f"part{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def run(llm: FakeLLM, inputs: Path, out: Path, **sets: object) -> RunResult:
    updates = run_updates(
        llm.url,
        **{"input.sources": [{"path": str(inputs / "*.jsonl")}], "run.output": str(out), "run.tasks": 3},
    )
    updates.update(sets)
    extras = {
        "rebalance": [{"by": "kind", "mode": "multiplier", "weights": {"original": 0.7}}],
        "curriculum": {"signal": "n_tokens", "stages": 3},
    }
    return run_config(load_config(REPO / "configs" / "demo.yaml", [], {**updates, **extras}))


def test_a_multi_task_finalize_equals_a_single_task_one(inputs: Path, tmp_path: Path) -> None:
    with FakeLLM() as llm:
        many = run(llm, inputs, tmp_path / "many")
        one = run(llm, inputs, tmp_path / "one", **{"run.finalize_tasks": 1})
    for stage in (ROWS, EXACT, *MINHASH[:1], COUNT, FINALIZE, LEDGER):
        done = sorted(p.name for p in (many.layout.logs / stage / "completions").iterdir())
        assert done == ["00000", "00001", "00002"], stage
    assert len(list(many.layout.ledger.glob("*.parquet"))) == 3  # one ledger shard per ledger task
    assert outputs(many) == outputs(one)
    assert many.stats["fates"] == one.stats["fates"] and many.stats["records"] == 27
    assert many.stats["drops"].get("dedup/exact_duplicate", 0) >= 3  # the copies, found across shards
    stages = {r["curriculum_stage"] for r in outputs(many)[0]}
    assert stages == {0, 1, 2}
    share = many.stats["dataset"]["synthetic_token_share"]
    plan = many.stats["dataset"]["mix_plan"]["after"]
    assert abs(plan["synthetic"] / sum(plan.values()) - 0.5) < 0.1 and 0 < share < 1


def test_files_that_share_ids_lose_nothing_that_is_not_a_near_duplicate(wiki_texts: list[str], tmp_path: Path) -> None:
    texts = [t for t in wiki_texts if len(t.split()) > 60][:6]
    near = texts[0].replace(" the ", " a ", 1)  # one word changed: a near-duplicate of file a's record 1
    files = {"a.jsonl": texts[:3], "b.jsonl": [*texts[3:], near]}
    for name, rows in files.items():
        (tmp_path / name).write_text(
            "".join(json.dumps({"id": str(i + 1), "text": t}) + "\n" for i, t in enumerate(rows))
        )
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        ["routing.rules=[{action: keep}]", "mix.synthetic_share=null", "language.enabled=false", "heuristics=[]"],
        {"input.sources": [{"path": str(tmp_path / "*.jsonl")}], "run.output": str(tmp_path / "out")},
    )
    result = run_config(cfg)
    ledger = {r["record"]: r for r in result.read_ledger()}
    assert len(ledger) == 7
    dropped = {k: r for k, r in ledger.items() if r["fate"] == "dropped"}
    assert list(dropped) == ["b.jsonl:4"] and dropped["b.jsonl:4"]["reason"] == "near_duplicate"
    assert json.loads(dropped["b.jsonl:4"]["detail"])["duplicate_of"] == "a.jsonl:1"
    rows = pq.read_table(result.layout.dataset_data).to_pylist()
    assert sorted(r["source_record"] for r in rows) == sorted(k for k in ledger if k not in dropped)
    assert sorted(r["id"] for r in rows) == sorted(k for k in ledger if k not in dropped)  # unique: the records
    assert sorted(r["source_id"] for r in rows) == ["1", "1", "2", "2", "3", "3"]  # input ids, colliding, all kept

    # a record lost between curate and the ledger (here: removed from curate's output by hand) fails the run
    shard = next(result.layout.docs.glob("*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, len(table) - 1), shard)
    with pytest.raises(LedgerIncomplete, match="read 7 records but the ledger has 6 rows"):
        run_config(cfg)
    assert isinstance(table, pa.Table)


def test_docs_of_a_task_that_read_other_shards_keep_their_ledger(inputs: Path, tmp_path: Path) -> None:
    """On Slurm one LLM task may read several curate tasks' files (work/filtered/00000..00002) and write one
    work/docs file whose documents still carry the shards they were read from; every later stage must file them
    under the work/docs file they live in, or the ledger finds no outcome for them."""
    with FakeLLM() as llm:
        first = run(llm, inputs, tmp_path / "out")
        docs = sorted(first.layout.docs.glob("*.parquet"))
        tables = []
        for p in docs:  # the shard each document was read from, as work/filtered's reader gives it
            table = pq.read_table(p)
            metas = [json.dumps({**json.loads(m), "shard": p.stem}) for m in table.column("meta").to_pylist()]
            tables.append(table.set_column(table.schema.get_field_index("meta"), "meta", pa.array(metas)))
            p.unlink()
        pq.write_table(pa.concat_tables(tables), docs[0])  # one LLM task's output: work/docs/00000 only
        second = run(llm, inputs, tmp_path / "out")
    assert second.stats["fates"] == first.stats["fates"]
    assert len(pq.read_table(second.layout.dataset_data)) == len(pq.read_table(first.layout.dataset_data))
    assert sorted(p.name for p in second.layout.rows.glob("*.parquet")) == ["00000.parquet"]


def test_two_sources_with_the_same_file_names_keep_every_record_apart(wiki_texts: list[str], tmp_path: Path) -> None:
    """Two crawls, each a folder of part-0.jsonl ...: records are named under each source's folder, so every row
    and ledger row is its own document's (not `part-0.jsonl:1` twice); naming one file twice is refused."""
    texts = [t for t in wiki_texts if len(t.split()) > 60][:6]
    for name, rows in {"cc": texts[:3], "wiki": texts[3:]}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "part-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    sets = ["routing.rules=[{action: keep}]", "mix.synthetic_share=null", "language.enabled=false", "heuristics=[]"]
    sources = [{"path": str(tmp_path / "cc")}, {"path": str(tmp_path / "wiki" / "*.jsonl")}]
    cfg = load_config(
        REPO / "configs" / "demo.yaml", sets, {"input.sources": sources, "run.output": str(tmp_path / "out")}
    )
    result = run_config(cfg)
    records = sorted(r["record"] for r in result.read_ledger())
    assert records == [f"{s}/part-0.jsonl:{i}" for s in ("cc", "wiki") for i in (1, 2, 3)]
    rows = {r["id"]: r["text"] for r in pq.read_table(result.layout.dataset_data).to_pylist()}
    assert rows == {f"{s}/part-0.jsonl:{i + 1}": t for s, part in (("cc", texts[:3]), ("wiki", texts[3:]))
                    for i, t in enumerate(part)}  # fmt: skip

    twice = load_config(
        REPO / "configs" / "demo.yaml",
        sets,
        {
            "input.sources": [*sources, {"path": str(tmp_path / "cc" / "part-0.jsonl")}],
            "run.output": str(tmp_path / "b"),
        },
    )
    with pytest.raises(ValueError, match=r"part-0.jsonl \(in .*cc\) is named by two input sources"):
        run_config(twice)


def test_parquet_input_fields_of_any_type_pass_through(wiki_texts: list[str], tmp_path: Path) -> None:
    """A Parquet input with timestamp, decimal and binary columns beside its text: the run finishes with every
    record accounted for (the work files hold metadata as JSON, which has no timestamp type)."""
    import datetime
    import decimal

    texts = [t for t in wiki_texts if len(t.split()) > 60][:3]
    table = pa.table(
        {
            "text": texts,
            "crawled": [datetime.datetime(2024, 1, i + 1, tzinfo=datetime.UTC) for i in range(3)],
            "price": pa.array([decimal.Decimal("1.50")] * 3, pa.decimal128(5, 2)),
            "raw": [b"\x00\xff"] * 3,
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    sets = ["routing.rules=[{action: keep}]", "mix.synthetic_share=null", "language.enabled=false", "heuristics=[]"]
    source = {"path": str(tmp_path / "in.parquet")}
    cfg = load_config(
        REPO / "configs" / "demo.yaml", sets, {"input.sources": [source], "run.output": str(tmp_path / "o")}
    )
    result = run_config(cfg)
    assert [r["fate"] for r in result.read_ledger()] == ["kept"] * 3
    assert sorted(pq.read_table(result.layout.dataset_data).column("text").to_pylist()) == sorted(texts)
