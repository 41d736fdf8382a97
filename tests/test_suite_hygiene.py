"""The test suite itself holds where our users' machines differ from ours."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIDELITY = ROOT / "tests" / "simulator" / "test_sim_sdk_fidelity.py"

_BLOCKERS = {
    # Neither the official SDK nor httpx installed (a plain `pip install -e .`).
    "absent": """
        import sys
        sys.modules["ailabtools"] = None
        sys.modules["httpx"] = None
    """,
    # The SDK is installed but fails to import (a missing or broken dependency).
    "broken": """
        import importlib.abc
        import sys

        class _Broken(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "ailabtools":
                    raise ImportError("a dependency of ailabtools is missing")
                return None

        sys.meta_path.insert(0, _Broken())
    """,
}


@pytest.mark.parametrize("how", sorted(_BLOCKERS))
def test_fidelity_test_skips_cleanly_without_the_official_sdk(how: str, tmp_path: Path) -> None:
    (tmp_path / "ailab_block_sdk.py").write_text(textwrap.dedent(_BLOCKERS[how]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "ailab_block_sdk",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",  # one test: in this process, not on workers of its own
            "-q",
            str(FIDELITY),
        ],
        cwd=ROOT,
        env={**_env(), "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # 5: "no tests ran", as a module-level skip leaves nothing to run; never 2 (an error).
    assert done.returncode in (0, 5), done.stdout + done.stderr
    assert "1 skipped" in done.stdout, done.stdout


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
