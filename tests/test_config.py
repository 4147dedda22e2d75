from pathlib import Path

import pytest

from rephrase.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["demo.yaml", "gpu.yaml", "slurm.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert cfg.input.sources and cfg.rephrase.sampling.n >= 1


def test_unknown_key_names_key_value_and_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("input:\n  sources: [{path: x.jsonl}]\nrephrase:\n  sampling: {n: 4, temprature: 0.5}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "rephrase.sampling.temprature" in msg and "unknown key" in msg and "0.5" in msg


def test_bad_value_and_all_errors_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("input:\n  sources: [{path: x.jsonl}]\nrun: {tasks: 0}\nmix: {synthetic_share: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "run.tasks" in msg and "(got 0)" in msg and "mix.synthetic_share" in msg and "(got 2)" in msg


def test_greedy_with_many_candidates_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("input:\n  sources: [{path: x.jsonl}]\n")
    with pytest.raises(ConfigError, match="identical candidates"):
        load_config(path, ["rephrase.sampling.temperature=0", "rephrase.sampling.n=4"])


def test_set_overrides_are_typed_and_paths_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("input:\n  sources: [{path: data/x.jsonl}]\n")
    cfg = load_config(path, ["rephrase.sampling.n=4", "language.languages=[en, fr]"])
    assert cfg.rephrase.sampling.n == 4 and cfg.language.languages == ["en", "fr"]
    assert cfg.resolve(cfg.input.sources[0].path) == str(tmp_path / "sub" / "data" / "x.jsonl")
    assert cfg.resolve("bundled:sample/wiki.jsonl") == "bundled:sample/wiki.jsonl"


def test_broken_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_route_rule_needs_prompts(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("input:\n  sources: [{path: x.jsonl}]\nrouting:\n  rules: [{action: rephrase}]\n")
    with pytest.raises(ConfigError, match=r"routing\.rules\.0"):
        load_config(path)


def test_slurm_executor_without_its_section_says_what_to_add(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("input:\n  sources: [{path: x.jsonl}]\nrun: {executor: slurm}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: run: .*executor slurm needs a run.slurm section"):
        load_config(path)
