"""What CI relies on from the test setup: a missing service fails under REPHRASE_REQUIRE_SERVICES=1 instead of
skipping, a mistyped marker is an error, and a hung test prints its stacks."""

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


def test_a_mistyped_marker_is_an_error_and_a_hang_dumps_stacks(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    (tmp_path / "test_typo.py").write_text("import pytest\n\n@pytest.mark.slwo\ndef test_x():\n    pass\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-c",
            str(REPO / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "test_typo.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "'slwo' not found in `markers` configuration option" in run.stdout, run.stdout
    assert float(request.config.getini("faulthandler_timeout")) > 0
