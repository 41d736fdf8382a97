"""How the suite runs: in parallel with pytest-xdist when it is there, in one process when not.

``addopts`` (pyproject.toml) asks for ``--numprocesses=auto --dist=loadgroup``. Run in one
process with ``-n 0`` (or ``-p no:xdist``).
"""

from __future__ import annotations

import pytest

#: Fixture scopes wider than one test: what such a fixture sets up, its tests share.
_SHARED_SCOPES = frozenset({"class", "module", "package", "session"})


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """Without pytest-xdist (not installed, or ``-p no:xdist``) its options in ``addopts`` are
    accepted and ignored, so the suite runs in one process instead of failing to start."""
    if pluginmanager.has_plugin("xdist"):
        return
    group = parser.getgroup("xdist", "pytest-xdist is not loaded: these options are ignored")
    group.addoption("--numprocesses", dest="numprocesses", default=None)
    group.addoption("--dist", dest="dist", default="no")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup``, a module's tests that use a module-scoped fixture of that
    module run on one worker, so the fixture is set up once a run (the planner and rate
    zoos' figures take tens of seconds), not once on each worker."""
    if not config.pluginmanager.has_plugin("xdist"):
        return
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        for name in info.names_closure:
            definitions = info.name2fixturedefs.get(name)
            if not definitions:
                continue
            shared = definitions[-1]
            if shared.scope in _SHARED_SCOPES and shared.baseid == module:
                item.add_marker(pytest.mark.xdist_group(module))
                break
