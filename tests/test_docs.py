"""The documentation site: every public name in the API reference, every page in the nav.

The API reference (``docs/reference/*.md``) is made of mkdocstrings directives: ``::: module``
renders a module and every name in its ``__all__``, ``::: module.Name`` one object. The fast
tests read those directives and compare them with the ``__all__`` of every public module
(any module of the package whose dotted path has no part starting with ``_``), so a new
public name without a reference entry fails here, in the default run. ``.ci/run`` builds the
site with ``mkdocs build --strict`` (a broken link or an unresolved reference fails) and then
runs the ``slow`` test below on that build, which checks the same names in the site's
inventory (``objects.inv``), what mkdocstrings really rendered.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml

import ailab_async

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
#: Earlier import paths that re-export a documented module (each says so in its docstring).
COMPATIBILITY_MODULES = {
    "ailab_async.simulator": "ailab_async.testing.simulator",
    "ailab_async.redis_limiter": "ailab_async.contrib.redis",
    "ailab_async.dask_recipe": "ailab_async.contrib.dask",
}
#: Set by .ci/run to the site it has just built; without it the slow test builds its own.
SITE_ENV = "DOCS_SITE_DIR"

_DIRECTIVE = re.compile(r"^::: (?P<target>[\w.]+)\n(?P<options>(?:[ ]{4}.*\n)*)", re.MULTILINE)


def public_modules() -> Iterator[ModuleType]:
    """Every public module of the package with an ``__all__``, compatibility paths aside."""
    yield ailab_async
    for info in pkgutil.walk_packages(ailab_async.__path__, "ailab_async."):
        if info.name in COMPATIBILITY_MODULES:
            continue
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        module = importlib.import_module(info.name)
        if hasattr(module, "__all__"):
            yield module


def public_names() -> dict[str, object]:
    """``module.name`` of every public name, and the object it names."""
    return {
        f"{module.__name__}.{name}": getattr(module, name)
        for module in public_modules()
        for name in module.__all__
    }


def directives() -> dict[str, str]:
    """Each ``::: target`` of the reference pages, with its (indented) options."""
    found: dict[str, str] = {}
    for page in sorted(REFERENCE.glob("*.md")):
        for match in _DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            assert match["target"] not in found, f"{match['target']} documented twice"
            found[match["target"]] = match["options"]
    return found


def documented() -> dict[str, object]:
    """``path.name`` of everything the directives render, and the object it names."""
    rendered: dict[str, object] = {}
    for target, options in directives().items():
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError:
            parent, _, name = target.rpartition(".")
            rendered[target] = getattr(importlib.import_module(parent), name)
            continue
        if "members: false" in options:
            continue
        for name in module.__all__:
            rendered[f"{target}.{name}"] = getattr(module, name)
    return rendered


def test_every_public_name_is_in_the_api_reference() -> None:
    """Documented under its own path, or as the same object where it is defined."""
    rendered = documented()
    by_name: dict[str, list[object]] = {}
    for path, obj in rendered.items():
        by_name.setdefault(path.rpartition(".")[2], []).append(obj)
    missing = [
        path
        for path, obj in public_names().items()
        if path not in rendered
        and not any(other is obj for other in by_name.get(path.rpartition(".")[2], []))
    ]
    assert not missing, f"public names missing from docs/reference/: {missing}"


def test_the_reference_documents_only_names_that_exist() -> None:
    # documented() imports every target; a stale one raises here rather than in mkdocs.
    assert documented()


def test_the_compatibility_paths_re_export_documented_modules() -> None:
    for old, new in COMPATIBILITY_MODULES.items():
        assert importlib.import_module(old).__all__ == importlib.import_module(new).__all__


def nav_pages(entries: list[object]) -> Iterator[str]:
    for entry in entries:
        if isinstance(entry, str):
            yield entry
            continue
        assert isinstance(entry, dict)
        for value in entry.values():
            yield from nav_pages(value) if isinstance(value, list) else [value]


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = set(nav_pages(config["nav"]))
    pages = {
        p.relative_to(DOCS).as_posix()
        for p in DOCS.rglob("*.md")
        if not p.name.startswith("_")  # a partial other pages include, not a page
    }
    assert listed - pages == set(), "nav entries without a page"
    assert pages - listed == set(), "pages left out of the nav"


def _load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "_hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docstrings_sphinx_roles_render_as_code_and_optional_links() -> None:
    hooks = _load_hooks()
    assert hooks.role_html("~", "ailab_async.errors.AILabError") == (
        '<autoref optional identifier="ailab_async.errors.AILabError">'
        "<code>AILabError</code></autoref>"
    )
    assert hooks.role_html("", "asyncio.sleep") == "<code>asyncio.sleep</code>"


def test_doctests_become_code_blocks_but_fenced_code_is_left_alone() -> None:
    hooks = _load_hooks()
    fenced = ["```pycon", ">>> 1", "```", "Run::"]
    assert hooks.rst_blocks(fenced) == ["```pycon", ">>> 1", "```", "Run:"]
    assert hooks.rst_blocks([">>> f()", "1", "", "after"]) == [
        "",
        "```pycon",
        ">>> f()",
        "1",
        "```",
        "",
        "",
        "after",
    ]


def inventory(site: Path) -> set[str]:
    """The object names in a built site's ``objects.inv`` (Sphinx inventory version 2)."""
    data = (site / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):  # four text lines, then the zlib-compressed entries
        header_end = data.index(b"\n", header_end) + 1
    entries = zlib.decompress(data[header_end:]).decode("utf-8")
    return {line.split(" ", 1)[0] for line in entries.splitlines() if line}


@pytest.mark.slow
def test_the_built_site_lists_every_public_name(tmp_path: Path) -> None:
    """mkdocstrings really rendered each public name (run by .ci/run after its build)."""
    site = Path(os.environ[SITE_ENV]) if os.environ.get(SITE_ENV) else tmp_path / "site"
    if not os.environ.get(SITE_ENV):
        subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
            cwd=ROOT,
            check=True,
        )
    names = inventory(site)
    missing = sorted(set(public_names()) - names)
    assert not missing, f"public names the built reference lacks: {missing}"
