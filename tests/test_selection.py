"""Selection logic with scripted candidates (the real-model checks are in test_pipeline.py)."""

from rephrase.llm.engine import Completion
from rephrase.llm.selection import select
from rephrase.llm.validators import VALIDATORS

SOURCE = (
    "The Amazon rainforest covers much of the Amazon basin of South America. It spans nine nations and holds "
    "the largest tropical forest in the world, with a great diversity of plants and animals living in it."
)
REWRITE = (
    "Spanning nine countries, the Amazon rainforest occupies most of South America's Amazon basin. It is the "
    "world's largest tropical forest and is home to an enormous variety of plant and animal species."
)


def validators():
    return [
        VALIDATORS.build(n, **p)
        for n, p in [("not_truncated", {}), ("length_ratio", {}), ("no_meta_text", {}), ("not_a_copy", {})]
    ]


def c(text: str, finish: str = "stop") -> Completion:
    return Completion(text=text, finish_reason=finish, output_tokens=len(text.split()))


def test_each_validator_rejects_its_failure() -> None:
    cands = [
        c(REWRITE, finish="length"),
        c("Short."),
        c("Here is the rewritten text: " + REWRITE),
        c(SOURCE),
        c(REWRITE),
    ]
    pick = select(SOURCE, cands, validators())
    assert pick.index == 4
    reasons = [sorted(v.reason for v in verdicts.values() if not v.ok) for verdicts in pick.verdicts]
    assert reasons == [["truncated"], ["length_ratio_low"], ["meta_text"], ["copy_of_source"], []]


def test_no_passing_candidate_records_reasons() -> None:
    pick = select(SOURCE, [c("As an AI, I cannot rewrite this."), c(SOURCE)], validators())
    assert not pick.accepted
    assert set(pick.reason().split(",")) == {"meta_text", "copy_of_source", "length_ratio_low"}
    assert select(SOURCE, [], validators()).reason() == "no_candidates"


def test_best_passing_candidate_is_closest_in_length() -> None:
    long = REWRITE + " " + REWRITE.replace("Amazon", "forest")
    pick = select(SOURCE, [c(long), c(REWRITE)], validators())
    assert pick.index == 1


def test_meta_text_in_source_is_not_held_against_the_rewrite() -> None:
    source = "I'm sorry to announce the bakery closes. " + SOURCE
    pick = select(source, [c("I'm sorry to say the bakery is closing. " + REWRITE)], validators())
    assert pick.accepted


def test_unknown_validator_lists_known() -> None:
    import pytest

    with pytest.raises(ValueError, match=r"known: .*length_ratio"):
        VALIDATORS.build("lenght_ratio")


def test_meta_commentary_seen_in_real_demo_output_is_caught() -> None:
    # both strings were accepted rewrites of SmolLM2-135M in a demo run before these patterns existed
    for chatter in (
        "This is a rewritten version of the text. I have made changes to improve clarity.",
        "I have now rewritten the text in the style of an encyclopedia.",
    ):
        pick = select(SOURCE, [c(REWRITE + "\n\n" + chatter)], validators())
        assert not pick.accepted and pick.failures["meta_text"] == 1


def test_model_checks_see_only_what_the_plain_checks_passed_in_one_batch() -> None:
    """A check with `prepare` (model-backed, like `faithful`) is prepared once per round with the sources and the
    candidates every plain check passed, and judges only those; plain checks still judge every candidate."""
    from rephrase.llm.selection import select_round
    from rephrase.llm.validators import Verdict

    class Costly:
        name = "costly"

        def __init__(self) -> None:
            self.prepared, self.judged = [], []

        def prepare(self, texts):
            self.prepared.append(list(texts))

        def __call__(self, source, candidate):
            self.judged.append(candidate.text)
            ok = "Amazon" in candidate.text
            return Verdict(ok, float(ok), None if ok else "off_topic")

    other = "A wholly different story about a lighthouse keeper and his dog, told at some length here."
    costly = Costly()
    rounds = [
        (SOURCE, [c(REWRITE, finish="length"), c(REWRITE)]),  # the first is cut: never reaches the model check
        (REWRITE, [c(REWRITE), c(other * 2)]),  # a copy, then off topic
    ]
    picks = select_round(rounds, [*validators(), costly])
    assert costly.prepared == [[SOURCE, REWRITE, REWRITE, other * 2]]
    assert costly.judged == [REWRITE, other * 2]
    assert [p.index for p in picks] == [1, None]
    assert "costly" not in picks[0].verdicts[0] and set(validators_names()) <= set(picks[0].verdicts[0])
    assert picks[1].failures == {"copy_of_source": 1, "off_topic": 1}


def validators_names() -> list[str]:
    return [v.name for v in validators()]
