"""Rebalancing and curriculum on the bundled sample's real Wikipedia leads (120 en, 20 fr, 20 es)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datatrove.data import Document
from pydantic import ValidationError

from rephrase.rebalance import (
    Curriculum,
    CurriculumConfig,
    Rebalance,
    RebalanceConfig,
    plan_curriculum,
    plan_rebalance,
    row_tokens,
)


@pytest.fixture(scope="module")
def leads(sample_dir: Path) -> list[Document]:
    rows = [json.loads(line) for line in (sample_dir / "wiki.jsonl").read_text().splitlines() if line.strip()]
    return [
        Document(r["text"], r["id"], metadata={"language": r["lang"], "n_tokens": len(r["text"].split())})
        for r in rows
    ]


def fresh(docs: list[Document]) -> list[Document]:
    return [Document(d.text, d.id, metadata=dict(d.metadata)) for d in docs]


def shares(tokens: dict[str, int]) -> dict[str, float]:
    total = sum(tokens.values())
    return {g: n / total for g, n in tokens.items()}


def test_share_mode_reaches_the_asked_distribution_within_the_upsampling_cap(leads: list[Document]) -> None:
    config = RebalanceConfig(by="language", weights={"en": 0.5, "fr": 0.25, "es": 0.25}, max_upsample=3)
    plan = plan_rebalance(leads, config, seed=0)
    print("\n" + plan.table())
    achieved = shares(plan.after)
    assert shares(plan.before)["en"] > 0.7  # the input is mostly English
    for lang, want in {"en": 0.5, "fr": 0.25, "es": 0.25}.items():
        assert abs(achieved[lang] - want) < 0.02, (lang, achieved)
    assert max(plan.copies) <= 3
    # the output is as large as the cap allows: the scarcest group is used (close to) 3 times
    assert max(plan.after[g] / plan.before[g] for g in ("fr", "es")) > 2.8


def test_multiplier_mode_scales_named_groups_and_leaves_the_others(leads: list[Document]) -> None:
    config = RebalanceConfig(by="language", mode="multiplier", weights={"en": 0.5, "fr": 2.0}, max_upsample=1.5)
    plan = plan_rebalance(leads, config, seed=0)
    assert abs(plan.after["en"] / plan.before["en"] - 0.5) < 0.02
    assert abs(plan.after["fr"] / plan.before["fr"] - 1.5) < 0.05  # 2.0 asked, capped at 1.5
    assert plan.after["es"] == plan.before["es"]


def test_share_mode_leaves_out_unnamed_groups_unless_star_names_them(leads: list[Document]) -> None:
    plan = plan_rebalance(leads, RebalanceConfig(by="language", weights={"en": 1.0}), seed=0)
    assert plan.after["fr"] == plan.after["es"] == 0 and plan.after["en"] == plan.before["en"]
    plan = plan_rebalance(leads, RebalanceConfig(by="language", weights={"en": 0.6, "*": 0.2}), seed=0)
    assert abs(shares(plan.after)["fr"] - 0.2) < 0.02


def test_rebalance_is_seeded_and_the_step_accounts_for_every_row(leads: list[Document]) -> None:
    config = RebalanceConfig(by="language", weights={"en": 0.4, "fr": 0.3, "es": 0.3}, max_upsample=2)
    assert plan_rebalance(leads, config, 1).copies == plan_rebalance(leads, config, 1).copies
    assert plan_rebalance(leads, config, 1).copies != plan_rebalance(leads, config, 2).copies
    step = Rebalance(config, seed=1)
    out = list(step.run(iter(fresh(leads))))
    stats = step.stats
    assert stats["total"].total == len(leads)
    assert stats["kept"].total + stats["dropped_rebalance_downsampled"].total == len(leads)
    assert len(out) == stats["kept"].total + stats["repeated"].total == sum(step.plan.copies)
    assert sum(row_tokens(d) for d in out) == sum(step.plan.after.values())
    repeats = [d for d in out if "rebalance_copy" in d.metadata]
    assert repeats and all(d.id.endswith(f"#rebalance{d.metadata['rebalance_copy']}") for d in repeats)


def test_share_mode_without_a_positive_weight_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="at least one weight"):
        RebalanceConfig(by="language", weights={"en": 0})
    with pytest.raises(ValidationError):
        RebalanceConfig(by="language", weights={"en": -1.0}, mode="multiplier")


def test_curriculum_orders_by_signal_in_equal_token_stages(leads: list[Document]) -> None:
    docs = fresh(leads)
    docs[0].metadata.pop("n_tokens")  # no signal; counted as whitespace words
    docs[1].metadata["n_tokens"] = None
    config = CurriculumConfig(signal="n_tokens", order="descending", stages=4)
    step = Curriculum(config, seed=0)
    out = list(step.run(iter(docs)))
    plan = step.plan
    print("\n" + "\n".join(f"stage {s}: {st}" for s, st in enumerate(plan.stages)))
    assert len(out) == len(docs) and plan.missing == 2 and {d.id for d in out[-2:]} == {docs[0].id, docs[1].id}
    signal = [d.metadata["n_tokens"] for d in out[:-2]]
    assert signal == sorted(signal, reverse=True)
    assert [d.metadata["curriculum_stage"] for d in out] == sorted(d.metadata["curriculum_stage"] for d in out)
    total = sum(s.tokens for s in plan.stages)
    assert total == sum(row_tokens(d) for d in docs)
    assert all(abs(s.tokens - total / 4) < max(row_tokens(d) for d in docs) for s in plan.stages)
    assert plan.stages[0].low >= plan.stages[1].high  # descending: stage 0 holds the longest rows


def test_curriculum_ties_follow_the_seed_and_strings_are_refused(leads: list[Document]) -> None:
    config = CurriculumConfig(signal="bucket")
    docs = [Document(d.text, d.id, metadata={"bucket": i % 3}) for i, d in enumerate(leads)]
    first, again, other = (plan_curriculum(docs, config, seed).order for seed in (0, 0, 1))
    assert first == again and first != other
    assert [docs[i].metadata["bucket"] for i in first] == sorted(d.metadata["bucket"] for d in docs)
    with pytest.raises(ValueError, match="must be numeric"):
        plan_curriculum(leads, CurriculumConfig(signal="language"), seed=0)
