"""What CI relies on from the test setup: a missing service fails under REPHRASE_REQUIRE_SERVICES=1 instead of
skipping, a mistyped marker is an error, and a hung test fails with its stacks while the suite goes on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import missing_service

REPO = Path(__file__).resolve().parent.parent


def test_a_missing_service_skips_here_and_fails_where_ci_requires_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPHRASE_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no chromium"):
        missing_service("no chromium")
    monkeypatch.setenv("REPHRASE_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="no chromium, and REPHRASE_REQUIRE_SERVICES=1"):
        missing_service("no chromium")
    assert "export REPHRASE_REQUIRE_SERVICES=1" in (REPO / ".ci" / "run").read_text()


def pytest_here(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """pytest with the project's configuration on a test file written into tmp_path."""
    command = [sys.executable, "-m", "pytest", "-q", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path)]
    return subprocess.run([*command, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_a_mistyped_marker_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "test_typo.py").write_text("import pytest\n\n@pytest.mark.slwo\ndef test_x():\n    pass\n")
    run = pytest_here(tmp_path, "test_typo.py")
    assert run.returncode != 0 and "'slwo' not found in `markers` configuration option" in run.stdout, run.stdout


def test_a_hung_test_fails_with_its_stack_and_the_next_test_still_runs(tmp_path: Path) -> None:
    hang = "import threading\n\ndef test_hang():\n    threading.Event().wait()\n\ndef test_after():\n    pass\n"
    (tmp_path / "test_hang.py").write_text(hang)
    run = pytest_here(tmp_path, "-o", "timeout=2", "test_hang.py")  # the project's timeout is 900 s
    assert "1 failed, 1 passed" in run.stdout and "Timeout" in run.stdout, run.stdout
    assert "test_hang" in run.stdout and "threading.Event().wait()" in run.stdout
