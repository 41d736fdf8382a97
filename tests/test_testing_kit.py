"""The testing kit works when pasted: a fresh project made of exactly the files that
docs/testing.md shows (its configuration, its code under test, its test module) passes
``pytest``, run in a subprocess with this interpreter and the installed package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
# A block to paste is announced by an HTML comment naming its file (invisible on the site).
PASTED = re.compile(r"<!-- pasted: (?P<name>[\w.]+) -->\n```\w*\n(?P<text>.*?)^```$", re.S | re.M)


def pasted_files() -> dict[str, str]:
    """File name -> content of every block docs/testing.md tells readers to paste."""
    return {match["name"]: match["text"] for match in PASTED.finditer(DOCS.read_text())}


def run_pytest(project: Path) -> subprocess.CompletedProcess[str]:
    env = {
        name: value
        for name, value in os.environ.items()
        # Nothing of this run's pytest set-up may leak into the pasted project's.
        if not name.startswith(("PYTEST_", "PYTHONPATH"))
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-W", "error"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def make_project(tmp_path: Path, files: dict[str, str]) -> Path:
    project = tmp_path / "fresh-project"
    project.mkdir()
    for name, text in files.items():
        (project / name).write_text(text)
    return project


def test_the_docs_show_a_configuration_code_and_tests() -> None:
    files = pasted_files()
    assert set(files) == {"pyproject.toml", "retouch.py", "test_retouch.py"}
    assert 'asyncio_mode = "auto"' in files["pyproject.toml"]


def test_the_pasted_snippet_passes_in_a_fresh_project(tmp_path: Path) -> None:
    files = pasted_files()
    tests = len(re.findall(r"^\s*async def test_", files["test_retouch.py"], re.M))
    result = run_pytest(make_project(tmp_path, files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"\b{tests} passed\b", result.stdout), result.stdout
    assert "skipped" not in result.stdout  # every test ran (a missing plugin skips them)


def test_a_failing_pasted_test_fails(tmp_path: Path) -> None:
    """The check above can fail: a snippet whose expectation is wrong makes pytest fail."""
    files = pasted_files()
    files["test_retouch.py"] = files["test_retouch.py"].replace(
        'stats.count("smart-skin", "OK") == 1', 'stats.count("smart-skin", "OK") == 2'
    )
    assert files != pasted_files()
    result = run_pytest(make_project(tmp_path, files))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout
    assert "test_retouch_returns_a_png" in result.stdout


def test_without_the_documented_configuration_the_async_tests_do_not_pass(
    tmp_path: Path,
) -> None:
    """The configuration block is needed: without it pytest-asyncio runs no async test."""
    files = pasted_files()
    del files["pyproject.toml"]
    result = run_pytest(make_project(tmp_path, files))
    # Depending on the pytest-asyncio release, the async tests fail as "not natively
    # supported" (exit 1), or the run stops at once on its warning that the configuration
    # is missing (exit 3 under -W error). Either way nothing passes.
    output = result.stdout + result.stderr
    assert result.returncode in (1, 3), output
    assert " passed" not in result.stdout
    assert (
        "async def functions are not natively supported" in output
        or "asyncio_default_fixture_loop_scope" in output
    ), output
