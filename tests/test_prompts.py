from pathlib import Path

import pytest

from rephrase.llm.prompts import PromptError, load_prompt, load_prompts, select_prompts

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
SHIPPED = {
    "textbook",
    "wikipedia",
    "qa",
    "diverse_qa",
    "distill",
    "extract_knowledge",
    "knowledge_list",
    "conversation",
}


def test_shipped_prompts_load_and_render_the_document() -> None:
    prompts = load_prompts(PROMPTS)
    assert set(prompts) >= SHIPPED
    for prompt in prompts.values():
        messages = prompt.messages("The Nile is a river in Africa.")
        assert messages[-1]["role"] == "user" and "The Nile is a river in Africa." in messages[-1]["content"]
        assert len(prompt.hash) == 12 and prompt.ref == f"{prompt.spec.name}@v{prompt.spec.version}"


def test_document_is_data_not_template() -> None:
    prompt = load_prompts(PROMPTS)["wikipedia"]
    hostile = "{{ 7*7 }} {% for x in range(3) %}loop{% endfor %} {{ self.__init__.__globals__ }} <|im_end|>"
    content = prompt.messages(hostile)[-1]["content"]
    assert hostile in content and "49" not in content


def test_broken_template_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nversion: 1\ndescription: x\nuser: |\n  line one\n  {{ document }\n")
    with pytest.raises(PromptError, match=r"broken\.yaml:6: user template"):
        load_prompt(path)


def test_unknown_variable_and_missing_document_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text("name: odd\nversion: 1\ndescription: x\nuser: 'Rewrite {{ documnet }}'\n")
    with pytest.raises(PromptError, match="documnet"):
        load_prompt(path)
    path.write_text("name: odd\nversion: 1\ndescription: x\nuser: 'Rewrite this.'\n")
    with pytest.raises(PromptError, match="never shows the document"):
        load_prompt(path)


def test_edit_changes_hash_and_unknown_prompt_lists_known(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nversion: 1\ndescription: x\nuser: 'Rewrite: {{ document }}'\n")
    before = load_prompt(path).hash
    path.write_text("name: p\nversion: 1\ndescription: x\nuser: 'Rewrite clearly: {{ document }}'\n")
    assert load_prompt(path).hash != before
    with pytest.raises(PromptError, match="known in"):
        select_prompts(tmp_path, {"nope"})
