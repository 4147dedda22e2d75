import re
from pathlib import Path

import pytest

from rephrase.config import ConfigError, load_config
from rephrase.layout import Layout
from rephrase.run import run_config

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


def test_every_component_name_and_parameter_is_checked_at_load(tmp_path: Path) -> None:
    path = tmp_path / "typos.yaml"
    path.write_text(
        "input:\n  sources: [{path: x.jsonl}]\n"
        "heuristics: [{use: gopher_quality, params: {min_doc_wrds: 40}}]\n"
        "quality:\n  classifiers: [{name: q, path: 'bundled:quality_startr'}]\n"
        "rephrase:\n  validators: [{use: not_truncated}, {use: not_emtpy}, {use: length_ratio, params: {lo: 0.5}},"
        " {use: length_ratio, params: {low: 5}}]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()[1:]
    assert all(line.strip().startswith(f"{path}: ") for line in lines) and len(lines) == 5
    msg = str(err.value)
    assert "heuristics.0.params: Value error, heuristics gopher_quality: unknown parameter(s) ['min_doc_wrds']" in msg
    assert "quality.classifiers.0.path: Value error, no bundled classifier 'quality_startr'" in msg
    assert "rephrase.validators.1.use: Value error, unknown validator 'not_emtpy'; known: faithful," in msg
    assert "rephrase.validators.2.params: Value error, validator length_ratio: bad parameters {'lo': 0.5}" in msg
    assert "rephrase.validators.3.params: Value error, length_ratio needs 0 < low < high" in msg


def test_a_config_with_a_typo_fails_before_a_rerun_clears_curate(tmp_path: Path) -> None:
    """A rerun with an edited config clears curate's outputs when the config changed: a config that cannot run
    must fail before that, or a typo costs the whole curate stage (its LLM generations only replay)."""
    demo = REPO / "configs" / "demo.yaml"
    updates = {
        "input.sources": [{"path": "bundled:sample/wiki.jsonl", "limit": 8}],
        "routing.rules": [{"action": "keep"}],  # no model: curate's outputs are what matters here
        "run.output": str(tmp_path / "out"),
    }
    run_config(load_config(demo, ["mix.synthetic_share=null"], updates))
    layout = Layout(tmp_path / "out")
    curated = {f: f.stat().st_mtime_ns for folder in (layout.docs, layout.curate_ledger) for f in folder.rglob("*")}
    assert any(p.suffix == ".parquet" for p in curated)
    for typo, key in (
        ("rephrase.validators=[{use: not_emtpy}]", "rephrase.validators.0.use"),
        ("heuristics=[{use: gopher_quality, params: {min_doc_wrds: 40}}]", "heuristics.0.params"),
    ):
        with pytest.raises(ConfigError, match=re.escape(f"{demo}: {key}: ")):
            run_config(load_config(demo, ["mix.synthetic_share=null", typo], updates))
        assert {f: f.stat().st_mtime_ns for f in curated if f.exists()} == curated
