"""Rebalancing and curriculum on the bundled sample's real Wikipedia leads (120 en, 20 fr, 20 es), planned from
the count step's histograms and applied row by row, as the count and finalize stages do."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from datatrove.data import Document
from planning import fresh, planned
from pydantic import ValidationError

from rephrase.plan import row_tokens
from rephrase.rebalance import Curriculum, CurriculumConfig, Rebalance, RebalanceConfig


@pytest.fixture(scope="module")
def leads(sample_dir: Path) -> list[Document]:
    rows = [json.loads(line) for line in (sample_dir / "wiki.jsonl").read_text().splitlines() if line.strip()]
    return [
        Document(r["text"], r["id"], metadata={"language": r["lang"], "n_tokens": len(r["text"].split())})
        for r in rows
    ]


def rebalanced(docs: list[Document], config: RebalanceConfig, folder: Path, seed: int = 0, tasks: int = 1):
    source = planned(docs, folder, rebalance=[config], seed=seed, tasks=tasks)
    step = Rebalance(source, 0)
    out = list(step.run(iter(fresh(docs))))
    return source.get().rebalance[0], out, step


def shares(tokens: dict[str, int]) -> dict[str, float]:
    total = sum(tokens.values())
    return {g: n / total for g, n in tokens.items()}


def test_share_mode_reaches_the_asked_distribution_within_the_upsampling_cap(
    leads: list[Document], tmp_path: Path
) -> None:
    config = RebalanceConfig(by="language", weights={"en": 0.5, "fr": 0.25, "es": 0.25}, max_upsample=3)
    plan, out, _ = rebalanced(leads, config, tmp_path)
    print("\n" + plan.table())
    achieved = shares(plan.after)
    assert shares(plan.before)["en"] > 0.7  # the input is mostly English
    for lang, want in {"en": 0.5, "fr": 0.25, "es": 0.25}.items():
        assert abs(achieved[lang] - want) < 0.02, (lang, achieved)
    assert max(Counter(d.id.split("#")[0] for d in out).values()) <= 3
    # the output is as large as the cap allows: the scarcest group is used (close to) 3 times
    assert max(plan.after[g] / plan.before[g] for g in ("fr", "es")) > 2.8


def test_multiplier_mode_scales_named_groups_and_leaves_the_others(leads: list[Document], tmp_path: Path) -> None:
    config = RebalanceConfig(by="language", mode="multiplier", weights={"en": 0.5, "fr": 2.0}, max_upsample=1.5)
    plan, _, _ = rebalanced(leads, config, tmp_path)
    assert abs(plan.after["en"] / plan.before["en"] - 0.5) < 0.02
    assert abs(plan.after["fr"] / plan.before["fr"] - 1.5) < 0.05  # 2.0 asked, capped at 1.5
    assert plan.after["es"] == plan.before["es"]


def test_share_mode_leaves_out_unnamed_groups_unless_star_names_them(leads: list[Document], tmp_path: Path) -> None:
    plan, _, _ = rebalanced(leads, RebalanceConfig(by="language", weights={"en": 1.0}), tmp_path / "a")
    assert plan.after["fr"] == plan.after["es"] == 0 and plan.after["en"] == plan.before["en"]
    config = RebalanceConfig(by="language", weights={"en": 0.6, "*": 0.2})
    plan, _, _ = rebalanced(leads, config, tmp_path / "b")
    assert abs(shares(plan.after)["fr"] - 0.2) < 0.02


def test_rebalance_is_seeded_sharding_free_and_the_step_accounts_for_every_row(
    leads: list[Document], tmp_path: Path
) -> None:
    config = RebalanceConfig(by="language", weights={"en": 0.4, "fr": 0.3, "es": 0.3}, max_upsample=2)
    ids = [
        [d.id for d in rebalanced(leads, config, tmp_path / f"{s}-{t}", s, t)[1]] for s, t in ((1, 1), (1, 4), (2, 1))
    ]
    assert ids[0] == ids[1] and ids[0] != ids[2]
    plan, out, step = rebalanced(leads, config, tmp_path / "run", seed=1)
    stats = step.stats
    assert stats["total"].total == len(leads)
    assert stats["kept"].total + stats["dropped_rebalance_downsampled"].total == len(leads)
    assert len(out) == stats["kept"].total + stats["repeated"].total
    assert sum(row_tokens(d) for d in out) == sum(plan.after.values())  # the plan's tokens are the output's
    repeats = [d for d in out if "rebalance_copy" in d.metadata]
    assert repeats and all(d.id.endswith(f"#rebalance{d.metadata['rebalance_copy']}") for d in repeats)


def test_share_mode_without_a_positive_weight_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="at least one weight"):
        RebalanceConfig(by="language", weights={"en": 0})
    with pytest.raises(ValidationError):
        RebalanceConfig(by="language", weights={"en": -1.0}, mode="multiplier")


def curriculum(docs: list[Document], config: CurriculumConfig, folder: Path) -> tuple[list[Document], Curriculum]:
    step = Curriculum(planned(docs, folder, curriculum=config))
    return list(step.run(iter(fresh(docs)))), step


def test_curriculum_puts_rows_in_equal_token_stages_by_signal(leads: list[Document], tmp_path: Path) -> None:
    docs = fresh(leads)
    docs[0].metadata["n_tokens"] = None  # no n_tokens: counted as whitespace words
    docs[1].metadata["length"] = None
    for d in docs[2:]:
        d.metadata["length"] = d.metadata["n_tokens"]
    config = CurriculumConfig(signal="length", order="descending", stages=4)
    out, step = curriculum(docs, config, tmp_path)
    plan = step.source.get().curriculum
    print("\n" + "\n".join(f"stage {s}: {st}" for s, st in enumerate(plan.stages)))
    by_id = {d.id: d for d in out}
    assert len(out) == len(docs) and by_id[docs[1].id].metadata["curriculum_stage"] == 3  # no signal: last stage
    assert step.stats["missing_signal"].total == 2  # docs[0] has no `length` either
    stage_of = [(d.metadata["curriculum_stage"], d.metadata.get("length")) for d in out if d.metadata.get("length")]
    for (s1, v1), (s2, v2) in ((a, b) for a in stage_of for b in stage_of):
        assert s1 >= s2 or v1 >= v2  # descending: an earlier stage never holds a shorter row
    tokens = Counter()
    for d in out:
        tokens[d.metadata["curriculum_stage"]] += row_tokens(d)
    total = sum(tokens.values())
    assert total == sum(row_tokens(d) for d in docs) == sum(s.tokens for s in plan.stages)
    assert all(abs(tokens[s] - total / 4) < 2 * max(row_tokens(d) for d in docs) for s in range(4)), tokens
    assert plan.stages[0].low >= plan.stages[1].high  # descending: stage 0 holds the longest rows


def test_curriculum_equal_signals_share_a_stage_and_strings_are_refused(leads: list[Document], tmp_path: Path) -> None:
    docs = [Document(d.text, d.id, metadata={"bucket": i % 3, "n_tokens": 10}) for i, d in enumerate(leads)]
    out, _ = curriculum(docs, CurriculumConfig(signal="bucket", stages=3), tmp_path / "a")
    assert {(d.metadata["bucket"], d.metadata["curriculum_stage"]) for d in out} == {(0, 0), (1, 1), (2, 2)}
    with pytest.raises(ValueError, match="must be numeric"):
        curriculum(leads, CurriculumConfig(signal="language"), tmp_path / "b")
