from datatrove.data import Document

from filters.dedup import ExactDedup
from rephrase.mix import Mix, plan_mix


def rows(n_orig: int, n_syn: int, tokens: int = 100) -> list[Document]:
    docs = [
        Document(text=f"o{i}", id=f"o{i}", metadata={"kind": "original", "n_tokens": tokens + i % 7})
        for i in range(n_orig)
    ]
    docs += [
        Document(text=f"s{i}", id=f"s{i}", metadata={"kind": "synthetic", "n_tokens": tokens + i % 5})
        for i in range(n_syn)
    ]
    return docs


def test_mix_hits_target_share_within_two_percent() -> None:
    for n_orig, n_syn, share in [(300, 100, 0.5), (100, 300, 0.5), (200, 200, 0.3), (500, 60, 0.5)]:
        plan = plan_mix(rows(n_orig, n_syn), share, 1.0, seed=0)
        assert abs(plan.achieved_share - share) < 0.02, (n_orig, n_syn, share, plan.achieved_share)


def test_mix_is_deterministic_and_seeded() -> None:
    docs = rows(300, 100)
    assert plan_mix(docs, 0.5, 1.0, 1).keep == plan_mix(docs, 0.5, 1.0, 1).keep
    assert plan_mix(docs, 0.5, 1.0, 1).keep != plan_mix(docs, 0.5, 1.0, 2).keep


def test_upsampling_is_capped() -> None:
    docs = rows(400, 100)
    plan = plan_mix(docs, 0.5, 2.0, seed=0)
    assert max(plan.repeats.values()) == 1 and abs(plan.achieved_share - 0.5) < 0.02
    assert len(plan.keep) < len(docs)  # originals still trimmed: 2x synthetic is not enough for 1:1


def test_no_synthetic_rows_keeps_everything() -> None:
    docs = rows(10, 0)
    step = Mix(0.5, 1.0, 0)
    assert len(list(step.run(iter(docs)))) == 10


def test_exact_dedup_names_the_twin_and_normalises() -> None:
    docs = [
        Document(text="The quick brown fox.", id="a", metadata={"kind": "original"}),
        Document(text="the QUICK brown   fox", id="b", metadata={"kind": "original"}),
        Document(text="Another text entirely.", id="c", metadata={"kind": "synthetic"}),
        Document(text="The quick brown fox!", id="a", metadata={"kind": "synthetic"}),
    ]
    step = ExactDedup()
    kept = list(step.run(iter(docs)))
    assert [d.id for d in kept] == ["a", "c"]
    assert docs[1].metadata["duplicate_of"] == "a" and docs[3].metadata["duplicate_of"] == "a"
    assert step.stats["dropped_exact_duplicate"].total == 2
