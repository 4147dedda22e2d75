from collections import Counter
from pathlib import Path

from datatrove.data import Document
from planning import fresh, planned

from filters.dedup import ExactDedup
from rephrase.mix import Mix
from rephrase.plan import BINS, build_plan, draw
from rephrase.tally import merge


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


def mixed(docs: list[Document], folder: Path, share: float, max_upsample: float = 1.0, seed: int = 0, tasks: int = 1):
    source = planned(docs, folder, share, max_upsample, seed=seed, tasks=tasks)
    step = Mix(source)
    out = list(step.run(iter(fresh(docs))))
    return out, source.get().mix, step


def share_of(out: list[Document]) -> float:
    tokens = Counter()
    for d in out:
        tokens[d.metadata["kind"]] += d.metadata["n_tokens"]
    return tokens["synthetic"] / sum(tokens.values())


def test_mix_hits_target_share_within_two_percent_and_the_plan_knows_the_exact_tokens(tmp_path: Path) -> None:
    for i, (n_orig, n_syn, share) in enumerate([(300, 100, 0.5), (100, 300, 0.5), (200, 200, 0.3), (500, 60, 0.5)]):
        out, plan, step = mixed(rows(n_orig, n_syn), tmp_path / str(i), share)
        assert abs(share_of(out) - share) < 0.02, (n_orig, n_syn, share, share_of(out))
        achieved = Counter()
        for d in out:
            achieved[d.metadata["kind"]] += d.metadata["n_tokens"]
        assert dict(achieved) == {k: v for k, v in plan.after.items() if v}  # thresholds on bins: exact, not estimated
        assert step.stats["total"].total == n_orig + n_syn


def test_mix_is_deterministic_seeded_and_the_same_however_the_counts_are_sharded(tmp_path: Path) -> None:
    docs = rows(300, 100)
    kept = [{d.id for d in mixed(docs, tmp_path / f"s{seed}-{run}", 0.5, seed=seed)[0]} for seed, run in
            ((1, 0), (1, 1), (2, 0))]  # fmt: skip
    assert kept[0] == kept[1] and kept[0] != kept[2]
    sharded = {d.id for d in mixed(docs, tmp_path / "three", 0.5, seed=1, tasks=3)[0]}
    assert sharded == kept[0]
    parts = [merge(tmp_path / "three"), merge(tmp_path / "s1-0")]
    assert parts[0] == parts[1]  # three count tasks merge to the one task's histogram


def test_upsampling_is_capped(tmp_path: Path) -> None:
    docs = rows(400, 100)
    out, _, _ = mixed(docs, tmp_path, 0.5, max_upsample=2.0)
    copies = Counter(d.id.split("#")[0] for d in out if d.metadata["kind"] == "synthetic")
    assert max(copies.values()) == 2 and abs(share_of(out) - 0.5) < 0.02
    assert sum(d.metadata["kind"] == "original" for d in out) < 400  # 2x synthetic is not enough for 1:1
    assert all(d.id.endswith("#copy1") for d in out if d.metadata.get("copy"))


def test_no_synthetic_rows_keeps_everything(tmp_path: Path) -> None:
    out, _, _ = mixed(rows(10, 0), tmp_path, 0.5)
    assert len(out) == 10


def test_mix_share_at_scale_from_histograms_alone() -> None:
    """200k rows (the bench's largest corpus) as a histogram: the planned share is within 0.05 points."""
    counts = {"tokens": Counter()}
    for i in range(200_000):
        kind = "synthetic" if i % 3 else "original"
        counts["tokens"][f'["{kind}", {draw(0, str(i))}]'] += 80 + i % 400
    plan = build_plan(counts, 0.5, 1.0, [], None)
    after = plan.mix.after
    assert abs(after["synthetic"] / sum(after.values()) - 0.5) < 0.0005
    assert plan.mix.rules["synthetic"].below < BINS


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
