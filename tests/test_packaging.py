"""A non-editable install: the wheel carries the prompts and configs (through rephrase/prompts and
rephrase/configs, links to the top-level folders in a checkout), so the CLI works from any folder without the
source checkout. The wheel is built from this checkout and installed without dependencies into a folder put first
on the path; the dependencies come from the test environment."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(tmp)], check=True)
    (wheel,) = tmp.glob("rephrase-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "rephrase/configs/demo.yaml" in names and "rephrase/prompts/wikipedia.yaml" in names
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    return site


def cli(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    code = "import sys, rephrase; print(rephrase.__file__, file=sys.stderr); from rephrase.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def test_the_installed_cli_lists_and_renders_the_shipped_prompts_from_any_folder(installed: Path, tmp_path) -> None:
    listed = cli(installed, tmp_path, "prompts", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.startswith(str(installed))  # the installed copy ran, not the checkout
    assert "wikipedia@v1" in listed.stdout and "textbook" in listed.stdout
    (tmp_path / "doc.txt").write_text("Lanzhou is the capital and largest city of Gansu province in China.")
    rendered = cli(installed, tmp_path, "prompts", "render", "wikipedia", "--doc", str(tmp_path / "doc.txt"))
    assert rendered.returncode == 0 and "Lanzhou is the capital" in rendered.stdout, rendered.stderr


def test_the_installed_demo_config_finds_its_prompts_corpus_and_classifier(installed: Path, tmp_path) -> None:
    """The shipped demo config, through estimate (its filters, classifier, prompts and tokenizer; no model run)."""
    demo = installed / "rephrase" / "configs" / "demo.yaml"
    est = cli(installed, tmp_path, "estimate", str(demo), "--sample", "6", "--measure", "0")
    assert est.returncode == 0, est.stdout[-2000:] + est.stderr[-3000:]
    assert "bundled:sample/wiki.jsonl" in est.stdout and "LLM requests" in est.stdout
