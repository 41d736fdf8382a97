"""The README's code blocks, run as a user would run them, against the local simulator.

The README marks each example as a section (``<!-- --8<-- [start:NAME] -->``; the site
includes the same sections, so there is one copy of each). Every block is saved as it stands
and run in a fresh folder holding ``face.jpg`` and ``photos/``: Python blocks with
``python``, shell blocks with ``bash -e``. ``AILAB_API_KEY`` and ``AILAB_BASE_URL`` point at a
simulator started for that block, so the snippets stay what a user pastes and none can reach
the real API; each test then checks what its block promises (files written, calls the
simulator served). In shell blocks, ``python -m pip install`` is not run (this checkout is
installed already) and ``export`` lines are skipped (the environment is given). The blocks
run concurrently: the Smart Beauty ones wait for the provider's 5 s first poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import re
import sys
import sysconfig
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

from ailab_async._config import API_KEY_ENV, BASE_URL_ENV
from ailab_async.testing.simulator import Simulator, SimulatorStats, sample_image

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN_TIMEOUT = 300.0  # generous: a busy CI machine; a hung snippet still fails

_SECTION = re.compile(
    r"<!-- --8<-- \[start:(?P<name>[\w-]+)\] -->\n(?P<body>.*?)<!-- --8<-- \[end:(?P=name)\] -->",
    re.DOTALL,
)
_BLOCK = re.compile(r"^```(?P<lang>\w*)\n(?P<code>.*?)^```$", re.DOTALL | re.MULTILINE)


@attrs.frozen
class Block:
    lang: str
    code: str


def sections(text: str) -> dict[str, list[Block]]:
    """The README's named sections and their code blocks, in order."""
    return {
        match["name"]: [Block(b["lang"], b["code"]) for b in _BLOCK.finditer(match["body"])]
        for match in _SECTION.finditer(text)
    }


def runnable_shell(code: str) -> str:
    """A shell block as the test runs it: no ``pip install`` step, ``export`` or comment line.

    >>> runnable_shell('# try\\nexport K=...\\npython -m pip install -e "." && ls # x\\n')
    'ls # x'
    """
    lines = []
    for line in code.splitlines():
        if line.lstrip().startswith(("export ", "#")):
            continue
        steps = [s.strip() for s in line.split("&&")]
        kept = [s for s in steps if not s.startswith("python -m pip install")]
        if kept:
            lines.append(" && ".join(kept))
    return "\n".join(lines).strip()


SECTIONS = sections(README.read_text(encoding="utf-8"))


@attrs.frozen
class Run:
    folder: Path
    stats: SimulatorStats
    stdout: str


async def run_block(block: Block, folder: Path, sim: Simulator) -> Run:
    """Run one block in ``folder`` against ``sim``; fail the test if it exits non-zero."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "face.jpg").write_bytes(sample_image(512, 512, seed=0))
    (folder / "photos").mkdir(exist_ok=True)
    for seed in range(1, 4):
        (folder / "photos" / f"portrait-{seed}.jpg").write_bytes(sample_image(320, 320, seed=seed))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AILAB_")  # nothing of a real key or host leaks in
    }
    env |= {API_KEY_ENV: sim.api_key, BASE_URL_ENV: sim.url, "PYTHONUNBUFFERED": "1"}
    # The installed `ailab-async` command, even when this Python's environment is not active.
    env["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), env.get("PATH", "")])
    if block.lang == "python":
        script = folder / "snippet.py"
        script.write_text(block.code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    else:
        assert block.lang == "bash", block.lang
        script = folder / "snippet.sh"
        script.write_text(runnable_shell(block.code) + "\n", encoding="utf-8")
        argv = ["bash", "-e", str(script)]
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=folder,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{script.name} did not finish within {RUN_TIMEOUT} s")
    text = output.decode(errors="replace")
    assert process.returncode == 0, f"{script.name} exited {process.returncode}:\n{text}"
    return Run(folder, sim.stats, text)


@contextlib.asynccontextmanager
async def simulators(count: int) -> AsyncIterator[list[Simulator]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Simulator()) for _ in range(count)]


def pngs(folder: Path) -> list[str]:
    found = sorted(p.name for p in folder.glob("*.png"))
    for name in found:
        assert (folder / name).read_bytes().startswith(b"\x89PNG"), name
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every runnable README block, run once, concurrently (most of the time is waiting)."""
    jobs = {name: SECTIONS[name][0] for name in ("single-call", "task", "batch", "cli")}
    jobs["quickstart"] = SECTIONS["quickstart"][0]
    base = tmp_path_factory.mktemp("readme")

    async def run_all() -> dict[str, Run]:
        async with simulators(len(jobs)) as sims:
            results = await asyncio.gather(
                *(
                    run_block(block, base / name, sim)
                    for (name, block), sim in zip(jobs.items(), sims, strict=True)
                )
            )
            return dict(zip(jobs, results, strict=True))

    return asyncio.run(run_all())


def test_every_code_block_of_the_readme_is_tested() -> None:
    """A block outside the checked sections may only install and set the key."""
    text = README.read_text(encoding="utf-8")
    checked = {"quickstart", "single-call", "task", "batch", "cli", "gains"}
    assert set(SECTIONS) == checked
    outside = _SECTION.sub("", text)
    for block in _BLOCK.finditer(outside):
        assert block["lang"] == "bash", block["code"]
        assert runnable_shell(block["code"]) == "", block["code"]


def test_a_single_call_retouches_face_jpg(runs: dict[str, Run]) -> None:
    run = runs["single-call"]
    assert pngs(run.folder) == ["face-retouched.png"]
    assert run.stats.count("smart-skin", "OK") == 1
    assert run.stdout.strip(), "the request id is printed"


def test_a_task_is_submitted_once_and_its_result_downloaded(runs: dict[str, Run]) -> None:
    run = runs["task"]
    assert pngs(run.folder) == ["face-beauty.png"]
    assert run.stdout.startswith("submitted ")
    assert run.stats.duplicate_submits() == 0
    assert run.stats.count("smart-beauty", "OK") == 1


def test_a_batch_retouches_every_photo(runs: dict[str, Run]) -> None:
    run = runs["batch"]
    assert pngs(run.folder / "retouched") == [f"portrait-{seed}.png" for seed in range(1, 4)]
    assert run.stats.count("smart-skin", "OK") == 3


def test_the_command_line_block_shows_credits_and_processes_the_folder(
    runs: dict[str, Run],
) -> None:
    run = runs["cli"]
    assert run.stats.count("query-credits", "OK") >= 1
    expected = [f"portrait-{seed}_jpg.png" for seed in range(1, 4)]
    assert pngs(run.folder / "retouched" / "photos") == expected
    assert pngs(run.folder / "beautified" / "photos") == expected


def test_the_first_quick_start_command_runs_the_demo_batch(runs: dict[str, Run]) -> None:
    """No key and no network: ``--simulate`` starts its own simulator in the command."""
    run = runs["quickstart"]
    assert run.stats.count() == 0  # the block's own simulator, not the one offered
    assert len(pngs(run.folder / "demo-out" / "demo-photos")) == 24
    lines = (run.folder / "demo-out" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 24
    # "run it again and it finishes at once (everything is already done)"
    batch_step = runnable_shell(SECTIONS["quickstart"][0].code).split("&&")[-1].strip()
    assert batch_step.startswith("ailab-async beauty "), batch_step

    async def again() -> Run:
        async with simulators(1) as (sim,):
            return await run_block(Block("bash", batch_step), run.folder, sim)

    assert re.search(r"already done\s+24", asyncio.run(again()).stdout)


def test_the_second_quick_start_command_is_what_ci_runs() -> None:
    """Installing the dev extra and running pytest: the extras exist, CI runs the same."""
    (block,) = [b for b in SECTIONS["quickstart"][1:] if "pytest" in b.code]
    command = runnable_shell(block.code)
    assert command == "python -m pytest"
    installs = re.findall(r'python -m pip install -e "\.\[([\w,]+)\]"', README.read_text())
    extras = importlib.metadata.metadata("ailab-async").get_all("Provides-Extra") or []
    assert installs
    for names in installs:
        assert set(names.split(",")) <= set(extras), names
    ci = (ROOT / ".ci" / "run").read_text()
    assert '-e ".[dev]"' in ci
    assert re.search(r"^python -m pytest$", ci, re.MULTILINE)


def test_no_block_names_a_key_or_a_host() -> None:
    """The snippets take the key and the host from the environment, never inline."""
    for name, blocks in SECTIONS.items():
        for block in blocks:
            assert "api_key=" not in block.code, name
            assert "base_url=" not in block.code, name
            assert "--base-url" not in block.code, name
