"""The ``ailab-async`` command line: batches, exit codes, names, progress, credits, resume.

``main`` runs ``asyncio.run``, so the in-process tests are plain functions. The crash test
runs the CLI as a subprocess against a simulator in the test's own process, whose counters
say whether anything was paid for twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import logging
import os
import re
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from ailab_async.batch import BatchItem, ItemOutcome
from ailab_async.batch.journal import ItemIdentity, ItemState, Journal, JournalBusyError
from ailab_async.cli import _batch as _batch_cli
from ailab_async.cli import main
from ailab_async.cli._progress import (
    ClientActivity,
    PlainProgress,
    ProgressState,
    RichProgress,
    display_text,
    format_duration,
)
from ailab_async.testing.simulator import (
    Credits,
    Fixed,
    Latency,
    ManualClock,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
    sample_image,
)

from ._ledger import check_ledger

T = TypeVar("T")


def make_photos(folder: Path, count: int, *, size: int = 160, start_seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        path = folder / f"p{number:03d}.jpg"
        path.write_bytes(sample_image(size, size, seed=start_seed + number))
        paths.append(path)
    return paths


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _no_real_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AILAB_API_KEY", raising=False)
    monkeypatch.delenv("AILAB_BASE_URL", raising=False)


class ThreadedSimulator:
    """A simulator on its own loop and thread, for in-process ``main`` (which owns its loop)."""

    def __init__(self, config: SimulatorConfig, clock: ManualClock | None = None) -> None:
        self.config = config
        self.clock = clock
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.sim: Simulator | None = None

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=15)

    def __enter__(self) -> Simulator:
        async def start() -> Simulator:
            sim = Simulator(self.config, clock=self.clock)
            await sim.start()
            return sim

        self.thread.start()
        self.sim = self._call(start())
        return self.sim

    def __exit__(self, *exc: object) -> None:
        assert self.sim is not None
        self._call(self.sim.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=15)
        self.loop.close()


@pytest.fixture
def threaded_sim() -> Iterator[Simulator]:
    with ThreadedSimulator(SimulatorConfig(credits=Credits(42, total=100))) as sim:
        yield sim


def key_file(tmp_path: Path, key: str, mode: int = 0o600) -> Path:
    path = tmp_path / "key.txt"
    path.write_text(key + "\n")
    path.chmod(mode)
    return path


# --------------------------------------------------------------------------- batches


def test_skin_batch_on_the_simulator_writes_outputs_and_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    code = main(["skin", str(tmp_path / "in"), "--out", str(out), "--simulate", "--retouch", "0.5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    outputs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert outputs == [f"in/p{i:03d}_jpg.png" for i in range(3)]
    assert all((out / name).read_bytes().startswith(b"\x89PNG") for name in outputs)
    lines = manifest(out)
    assert len(lines) == 3
    assert {line["state"] for line in lines} == {"downloaded"}
    assert {line["params"]["retouch_degree"] for line in lines} == {0.5}
    # Not a terminal: plain lines, one per item, then the summary.
    item_lines = [line for line in captured.out.splitlines() if line.startswith("[")]
    assert len(item_lines) == 3
    assert all(" ok " in line and "_jpg.png" in line for line in item_lines)
    assert "\x1b[" not in captured.out + captured.err  # no terminal control codes
    assert "downloaded      3" in captured.out
    assert f"manifest: {out / 'manifest.jsonl'}" in captured.out
    assert f"report:   {out / 'report.html'}" in captured.out
    assert (out / "report.html").is_file()
    # Simulated runs keep a journal of their own: a real run never takes their results.
    assert f"journal:  {out / '.ailab-journal-simulated.sqlite3'}" in captured.out
    assert not (out / ".ailab-journal.sqlite3").exists()
    assert "sim-key-000" not in captured.out + captured.err


def test_rerun_with_the_same_journal_does_nothing_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photos(tmp_path / "in", 2)
    argv = ["skin", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--simulate"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "already done    2" in out
    assert "downloaded      0" in out
    assert not [line for line in out.splitlines() if line.startswith("[")]


def test_beauty_batch_with_a_custom_journal_against_a_base_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photos(tmp_path / "in", 2)
    journal = tmp_path / "state" / "j.sqlite3"
    config = SimulatorConfig(tasks=TaskBehaviour(duration=Fixed(0.05)))
    with ThreadedSimulator(config) as sim:
        argv = ["beauty", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
        argv += ["--base-url", sim.url, "--api-key-file", str(key_file(tmp_path, sim.api_key))]
        argv += ["--journal", str(journal), "--level", "0.7", "--multi-face"]
        argv += ["--poll-interval", "0.05", "--concurrency", "2", "--rate", "50", "--timeout", "5"]
        assert main(argv) == 0, capsys.readouterr().err
        assert sim.stats.count("smart-beauty", "OK") == 2
    assert journal.exists()
    assert not (tmp_path / "out" / ".ailab-journal.sqlite3").exists()
    lines = manifest(tmp_path / "out")
    assert [line["params"] for line in lines] == [{"beauty_level": 0.7, "multi_face": True}] * 2
    assert all(line["task_id"] for line in lines)


def test_simulated_runs_refuse_a_custom_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photos(tmp_path / "in", 1)
    argv = ["skin", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--simulate"]
    assert main([*argv, "--journal", str(tmp_path / "j.sqlite3")]) == 2
    assert "cannot be combined with --simulate" in capsys.readouterr().err


def test_a_simulated_rerun_runs_again_what_waited_on_the_dead_simulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [photo, _] = make_photos(tmp_path / "in", 2)
    out = tmp_path / "out"

    async def interrupted_earlier_run() -> None:
        # What an interrupted simulated run leaves: a task only its simulator knew.
        async with await Journal.open(out / ".ailab-journal-simulated.sqlite3") as journal:
            entry = await journal.claim(
                ItemIdentity.for_path(photo),
                "smart-beauty",
                {"beauty_level": 1.0, "multi_face": False},
                source=str(photo),
                relative=f"in/{photo.name}",
            )
            await journal.mark_sending(entry.item_id)
            await journal.mark_submitted(
                entry.item_id,
                task_id="task-of-a-dead-simulator",
                request_id=None,
                log_id=None,
                submitted_at=dt.datetime.now(dt.timezone.utc),
            )

    asyncio.run(interrupted_earlier_run())
    argv = ["beauty", str(tmp_path / "in"), "--out", str(out), "--simulate"]
    argv += ["--sim-task-duration", "0.05", "--poll-interval", "0.05"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "1 item(s) of an earlier simulated run" in captured.err
    assert [line["state"] for line in manifest(out)] == ["downloaded"] * 2


def test_some_failures_exit_1_and_are_summarised_by_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    make_photos(folder, 1)
    Image.new("RGB", (300, 300), (128, 128, 128)).save(folder / "blank.jpg")  # no face
    (folder / "tiny.jpg").write_bytes(sample_image(100, 100))  # below smart-skin's 128 px
    out = tmp_path / "out"
    assert main(["skin", str(folder), "--out", str(out), "--simulate"]) == 1
    stdout = capsys.readouterr().out
    assert "failed          2" in stdout
    assert "ERROR_NO_FACE_IN_FILE" in stdout
    assert "VALIDATION_RESOLUTION" in stdout
    assert "--retry-failed" in stdout
    states = {Path(line["input"]).name: line["state"] for line in manifest(out)}
    assert states == {"p000.jpg": "downloaded", "blank.jpg": "failed", "tiny.jpg": "failed"}
    # Failed for good: the rerun reports them again (exit 1) without sending anything.
    assert main(["skin", str(folder), "--out", str(out), "--simulate"]) == 1
    assert "failed in an earlier run" in capsys.readouterr().out


def test_output_folder_inside_an_input_folder_is_not_read_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photos(tmp_path / "in", 2)
    argv = ["skin", str(tmp_path / "in"), "--out", str(tmp_path / "in" / "out"), "--simulate"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0  # the first run's results are not inputs of the second
    out = capsys.readouterr().out
    assert "summary: 2 items\n" in out
    assert "other file" not in out  # the output folder's own files are not inputs either
    assert "already done    2" in out
    assert len(manifest(tmp_path / "in" / "out")) == 2


def test_keyboard_interrupt_exits_130_and_closes_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_photos(tmp_path / "in", 1)

    async def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_batch_cli, "run_batch", interrupted)
    code = main(["skin", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--simulate"])
    assert code == 130
    assert "run the same command again to resume" in capsys.readouterr().err


def test_the_batch_runs_on_the_journal_its_preflight_locked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_photos(tmp_path / "in", 1)
    real_run_batch = _batch_cli.run_batch
    seen: list[str] = []

    async def run_batch(client: Any, items: Any, spec: Any, **kwargs: Any) -> Any:
        try:  # another run between the pre-flight and the batch: refused
            await Journal.open(spec.journal_file)
        except JournalBusyError:
            seen.append("busy")
        return await real_run_batch(client, items, spec, **kwargs)

    monkeypatch.setattr(_batch_cli, "run_batch", run_batch)
    code = main(["skin", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--simulate"])
    assert code == 0, capsys.readouterr().err
    assert seen == ["busy"]


def test_verbose_logs_the_sdk_on_stderr_without_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photos(tmp_path / "in", 1)
    logger = logging.getLogger("ailab_async")
    handlers_before = list(logger.handlers)
    argv = ["skin", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--simulate", "-vv"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "DEBUG ailab_async" in err
    assert "sim-key-000" not in err
    assert "/results/" not in err  # result URLs are never logged
    assert logger.handlers == handlers_before


# --------------------------------------------------------------------------- unsafe names


HOSTILE_NAMES = [
    "...jpg",
    "..hidden.jpg",
    ".hidden.jpg",
    "a..b.jpg",
    " spaced  name .jpg",
    "ünïcødé 照片.jpg",
    "[bold]markup[red].jpg",
    "-looks-like-an-option.jpg",
    "x" * 240 + ".jpg",
    "照" * 80 + ".jpg",  # 244 bytes: fits the disk, but not with a suffix, unless shortened
    "照" * 79 + "X.jpg",  # the same long prefix must not collide with the one above
]


def test_hostile_names_end_up_inside_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    nested = folder / "..." / ".git" / "sub dir"
    nested.mkdir(parents=True)
    for seed, name in enumerate(HOSTILE_NAMES):
        (folder / name).write_bytes(sample_image(160, 160, seed=seed))
    (nested / "deep.jpg").write_bytes(sample_image(160, 160, seed=99))
    single = tmp_path / "single..jpg"
    single.write_bytes(sample_image(160, 160, seed=100))
    out = tmp_path / "out"
    before = {p for p in tmp_path.rglob("*") if out not in p.parents}
    code = main(
        ["skin", str(folder), f"{tmp_path}/in/../single..jpg", "--out", str(out), "--simulate"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    after = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}
    assert after == before  # nothing written anywhere but --out
    outputs = list(out.rglob("*.png"))
    assert len(outputs) == len(HOSTILE_NAMES) + 2
    root = out.resolve()
    for path in outputs:
        assert root in path.resolve().parents
        assert not any(part.startswith(".") for part in path.relative_to(out).parts)
        assert len(path.name.encode()) <= 200
    lines = manifest(out)
    assert len(lines) == len(HOSTILE_NAMES) + 2
    assert {line["state"] for line in lines} == {"downloaded"}
    assert all(not Path(line["output"]).is_absolute() for line in lines)
    assert all(".." not in Path(line["output"]).parts for line in lines)
    assert "[bold]markup[red]" in captured.out  # printed as text


CONTROL_NAMES = ["new\nline.jpg", "esc\x1b[2Jape.jpg", "tab\there.jpg"]


def photos_with_control_characters(folder: Path) -> None:
    folder.mkdir()
    for seed, name in enumerate(CONTROL_NAMES):
        (folder / name).write_bytes(sample_image(160, 160, seed=seed))


def test_names_with_control_characters_are_escaped_on_screen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos_with_control_characters(tmp_path / "in")
    main(["skin", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--simulate"])
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out + captured.err
    assert "in/new\\nline.jpg" in captured.out
    assert "in/tab\\there.jpg" in captured.out
    assert len(manifest(tmp_path / "out")) == 3


def test_names_with_control_characters_are_processed(tmp_path: Path) -> None:
    photos_with_control_characters(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["skin", str(tmp_path / "in"), "--out", str(out), "--simulate"]) == 0
    assert len(list(out.rglob("*.png"))) == 3


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses non-UTF-8 file names")
def test_names_that_are_not_utf8_are_skipped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    make_photos(folder, 1)
    (folder / os.fsdecode(b"bad\xff.jpg")).write_bytes(sample_image(160, 160, seed=5))
    out = tmp_path / "out"
    assert main(["skin", str(folder), "--out", str(out), "--simulate"]) == 1
    captured = capsys.readouterr()
    assert "not valid UTF-8" in captured.err
    assert "not processed   1" in captured.out
    assert [line["state"] for line in manifest(out)] == ["downloaded"]


def test_two_inputs_that_would_write_the_same_output_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [first] = make_photos(tmp_path / "a", 1)
    [second] = make_photos(tmp_path / "b", 1, start_seed=1)
    code = main(["skin", str(first), str(second), "--out", str(tmp_path / "o"), "--simulate"])
    assert code == 2
    assert "same output" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- exit code 2


def test_missing_key_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photos(tmp_path / "in", 1)
    assert main(["skin", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no API key" in err
    assert "AILAB_API_KEY" in err
    assert "--api-key-file" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_no_inputs_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a photo")
    argv = ["beauty", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--simulate"]
    assert main(argv) == 2
    assert "no input images found" in capsys.readouterr().err
    argv = ["skin", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--simulate"]
    assert main(argv) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_an_output_dir_that_is_a_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photos(tmp_path / "in", 1)
    (tmp_path / "taken").write_text("a file")
    argv = ["skin", str(tmp_path / "in"), "--out", str(tmp_path / "taken"), "--simulate"]
    assert main(argv) == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [
        ["--retouch", "9"],
        ["--concurrency", "0"],
        ["--rate", "-1"],
        ["--simulate", "--base-url", "http://127.0.0.1:1"],
        ["--api-key", "k"],  # there is deliberately no such option
        ["--api-key=k"],
        ["--api-key"],
        ["--api-k", "k"],  # and no abbreviation of --api-key-file
        ["--nonsense"],
    ],
)
def test_bad_flags_exit_2(tmp_path: Path, extra: list[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["skin", str(tmp_path), "--out", str(tmp_path / "out"), *extra])
    assert excinfo.value.code == 2
    assert not (tmp_path / "out").exists()


def test_a_key_on_the_command_line_is_refused_without_echoing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["--api-key", "sk-secret-123"], ["--api-key=sk-secret-123"]):
        with pytest.raises(SystemExit) as excinfo:
            main(["credits", *argv])
        assert excinfo.value.code == 2
        err = capsys.readouterr().err
        assert "AILAB_API_KEY" in err
        assert "sk-secret-123" not in err


def test_out_is_required(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["beauty", str(tmp_path)])
    assert excinfo.value.code == 2


def test_a_journal_that_is_not_one_is_an_error_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], threaded_sim: Simulator
) -> None:
    make_photos(tmp_path / "in", 1)
    journal = tmp_path / "j.sqlite3"
    journal.write_bytes(b"this is not an SQLite database" * 100)
    argv = ["skin", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--journal"]
    argv += [str(journal), "--base-url", threaded_sim.url]
    argv += ["--api-key-file", str(key_file(tmp_path, threaded_sim.api_key))]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "journal" in err
    assert "Traceback" not in err


def test_a_journal_of_another_key_is_refused_before_paying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photos(tmp_path / "in", 1)
    config = SimulatorConfig(extra_api_keys=("sim-key-rotated",))
    with ThreadedSimulator(config) as sim:
        (tmp_path / "old").mkdir()
        (tmp_path / "new").mkdir()
        old_key = key_file(tmp_path / "old", sim.api_key)
        new_key = key_file(tmp_path / "new", "sim-key-rotated")
        argv = ["skin", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
        argv += ["--base-url", sim.url, "--api-key-file"]
        assert main([*argv, str(old_key)]) == 0
        make_photos(tmp_path / "in", 1, start_seed=1)  # p000.jpg again, new content: unpaid
        capsys.readouterr()
        assert main([*argv, str(new_key)]) == 2
        err = capsys.readouterr().err
        assert "another API key" in err
        assert "--reassign-account" in err
        assert "Traceback" not in err
        assert "sim-key-rotated" not in err
        assert sim.stats.count("smart-skin") == 1  # nothing sent under the other key
        assert main([*argv, str(new_key), "--reassign-account"]) == 0
        assert sim.stats.count("smart-skin", "OK") == 2


def test_bad_simulator_knob_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_photos(tmp_path / "in", 1)
    argv = ["beauty", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--simulate"]
    assert main([*argv, "--sim-task-duration", "3:1"]) == 2
    assert "error" in capsys.readouterr().err


def test_empty_or_odd_key_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_photos(tmp_path / "in", 1)
    argv = ["skin", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--api-key-file"]
    assert main([*argv, str(key_file(tmp_path, "   "))]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main([*argv, str(key_file(tmp_path, "two words"))]) == 2
    assert "the key alone" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the file given to --api-key-file" in err
    assert "nope.txt" not in err  # it might have been the key, given where a path belongs


def test_a_plain_http_base_url_elsewhere_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_photos(tmp_path / "in", 1)
    monkeypatch.setenv("AILAB_API_KEY", "not-a-real-key")
    argv = ["skin", str(tmp_path / "in"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--base-url", "http://example.invalid"]) == 2
    err = capsys.readouterr().err
    assert "plain HTTP" in err
    assert "not-a-real-key" not in err


# --------------------------------------------------------------------------- credits


def test_credits_on_the_simulator_prints_buckets_and_total(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["credits", "--simulate", "--sim-credits", "42"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any("42 of 42" in line for line in out)
    assert out[-1].split() == ["total", "42"]


def test_credits_with_a_key_file_and_base_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], threaded_sim: Simulator
) -> None:
    path = key_file(tmp_path, threaded_sim.api_key)
    assert main(["credits", "--base-url", threaded_sim.url, "--api-key-file", str(path)]) == 0
    captured = capsys.readouterr()
    assert "42 of 100" in captured.out
    assert "warning" not in captured.err


def test_a_key_file_readable_by_others_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], threaded_sim: Simulator
) -> None:
    path = key_file(tmp_path, threaded_sim.api_key, mode=0o644)
    assert main(["credits", "--base-url", threaded_sim.url, "--api-key-file", str(path)]) == 0
    err = capsys.readouterr().err
    assert "readable by other users" in err
    assert "chmod 600" in err
    assert threaded_sim.api_key not in err


def test_a_refused_key_exits_2_with_the_api_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], threaded_sim: Simulator
) -> None:
    path = key_file(tmp_path, "wrong-key-not-real")
    assert main(["credits", "--base-url", threaded_sim.url, "--api-key-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "ERROR_USER_NOT_EXISTS" in err
    assert "wrong-key-not-real" not in err
    assert "Traceback" not in err


def test_a_refused_key_stops_a_batch_before_any_item_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], threaded_sim: Simulator
) -> None:
    make_photos(tmp_path / "in", 2)
    path = key_file(tmp_path, "wrong-key-not-real")
    argv = ["skin", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    argv += ["--base-url", threaded_sim.url, "--api-key-file", str(path)]
    assert main(argv) == 2
    assert "ERROR_USER_NOT_EXISTS" in capsys.readouterr().err
    assert threaded_sim.stats.count("smart-skin") == 0


def test_batch_warns_when_the_balance_cannot_cover_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photos(tmp_path / "in", 4)
    argv = ["skin", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--simulate"]
    assert main([*argv, "--sim-credits", "2", "--concurrency", "1"]) == 1
    captured = capsys.readouterr()
    assert "credit balance (2) cannot cover the 4 billed call(s)" in captured.err
    assert "ERROR_NOT_ENOUGH_CREDITS" in captured.out
    # The rerun counts only what still needs paying: the 2 failed items (with --retry-failed).
    assert main([*argv, "--sim-credits", "1", "--retry-failed"]) == 1  # one more paid for
    captured = capsys.readouterr()
    assert "cannot cover the 2 billed call(s)" in captured.err
    assert "already done    2" in captured.out
    assert main([*argv, "--sim-credits", "1", "--retry-failed"]) == 0  # the last one
    captured = capsys.readouterr()
    assert "cannot cover" not in captured.err
    assert "already done    3" in captured.out


# --------------------------------------------------------------------------- sample-photos


def test_sample_photos_are_deterministic_jpegs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sample-photos", str(tmp_path / "a"), "-n", "3", "--size", "200"]) == 0
    assert "wrote 3" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["portrait-000.jpg", "portrait-001.jpg", "portrait-002.jpg"]
    assert main(["sample-photos", str(tmp_path / "b"), "-n", "3", "--size", "200"]) == 0
    for name in names:
        data = (tmp_path / "a" / name).read_bytes()
        assert data == (tmp_path / "b" / name).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.size) == ("JPEG", (200, 200))
    assert (tmp_path / "a" / names[0]).read_bytes() != (tmp_path / "a" / names[1]).read_bytes()


def test_sample_photos_refuses_a_file_as_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_text("x")
    assert main(["sample-photos", str(tmp_path / "f")]) == 2
    assert "not a directory" in capsys.readouterr().err


# --------------------------------------------------------------------------- progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def outcome(name: str, state: ItemState, how: str = "ran", code: str | None = None) -> ItemOutcome:
    return ItemOutcome(
        item=BatchItem(Path(name), name),
        state=state,
        how=how,
        output_path=Path("out") / f"{name}.png" if state is ItemState.DOWNLOADED else None,
        error_code=code,
        error_message="no face" if code else None,
    )


def test_progress_state_counts_rate_and_eta() -> None:
    clock = FakeClock()
    state = ProgressState(total=10, clock=clock, concurrency=8)
    assert state.rate() is None
    assert state.eta() is None
    state.record("finished", outcome("old", ItemState.DOWNLOADED, how="skipped"))
    for _ in range(4):
        state.record("started", None)
    clock.now += 2.0
    state.record("finished", outcome("a", ItemState.DOWNLOADED))
    state.record("finished", outcome("b", ItemState.FAILED, code="ERROR_NO_FACE_IN_FILE"))
    assert (state.settled, state.downloaded, state.failed, state.skipped) == (3, 2, 1, 1)
    assert state.in_progress == 2
    assert state.rate() == pytest.approx(1.0)  # 2 worked items in 2 s; the skipped one is free
    assert state.eta() == pytest.approx(7.0)
    state.observe(ClientActivity(requests_in_flight=3))
    assert state.summary() == (
        "3/10 settled · elapsed 2s · ETA 7s · 1.0/s · 1 failed · 2 in progress"
        " · 3/8 requests in flight"
    )


def test_before_the_first_result_the_display_says_what_it_waits_for() -> None:
    clock = FakeClock()
    state = ProgressState(total=12, clock=clock, concurrency=8)
    assert state.waiting() == "starting"
    for _ in range(12):
        state.record("started", None)
    assert state.waiting() == "12 photos starting"
    state.observe(ClientActivity(requests_in_flight=8))
    assert state.waiting() == "8/8 requests in flight, no answer yet"
    state.observe(ClientActivity(tasks_pending=12, first_poll_after=5.0))
    clock.now += 1.0
    assert state.waiting() == "12 tasks submitted, first poll in ~4s"
    clock.now += 4.0
    assert state.waiting() == "12 tasks submitted, first poll due"
    state.observe(ClientActivity(tasks_pending=12, polls_sent=1, first_poll_after=5.0))
    assert state.waiting() == "12 tasks submitted, 1 poll sent, none done yet"
    assert state.stats() == state.waiting()
    assert state.summary() == (
        "0/12 settled · elapsed 5s · waiting: 12 tasks submitted, 1 poll sent, none done yet"
    )
    state.record("finished", outcome("a", ItemState.DOWNLOADED))
    assert state.waiting() is None
    assert "11 in progress" in state.stats()


def test_resumed_items_are_counted_as_a_part_of_downloaded() -> None:
    state = ProgressState(total=3, clock=FakeClock())
    state.record("finished", outcome("a", ItemState.DOWNLOADED, how="resumed"))
    state.record("finished", outcome("b", ItemState.DOWNLOADED))
    state.record("finished", outcome("c", ItemState.FAILED, how="resumed", code="ERROR_X"))
    assert (state.downloaded, state.resumed, state.failed) == (2, 1, 1)


def test_plain_progress_prints_items_and_periodic_summaries() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    progress = PlainProgress(ProgressState(3, clock), stream, summary_every=10.0)
    progress.on_event("finished", outcome("done-before", ItemState.DOWNLOADED, how="skipped"))
    progress.on_event("started", None)
    progress.on_event("started", None)
    progress.on_event("finished", outcome("a.jpg", ItemState.DOWNLOADED))
    clock.now += 11
    progress.observe(ClientActivity(requests_in_flight=1))
    progress.on_event("finished", outcome("b\x1b.jpg", ItemState.FAILED, code="ERROR_X"))
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[2/3] ok        a.jpg -> out/a.jpg.png"
    assert lines[1] == (
        "progress: 2/3 settled · elapsed 11s · ETA 11s · 0.1/s · 0 failed · 1 in progress"
        " · 1 request in flight"
    )
    assert lines[2] == "[3/3] FAILED    b\\x1b.jpg: ERROR_X: no face"
    assert len(lines) == 3  # the item done in an earlier run is counted, not listed


def test_plain_progress_says_what_it_waits_for_when_there_is_news() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    progress = PlainProgress(ProgressState(2, clock), stream, summary_every=10.0)
    progress.on_event("started", None)
    progress.on_event("started", None)
    progress.observe(ClientActivity(tasks_pending=2, first_poll_after=5.0))
    clock.now += 2
    progress.observe(ClientActivity(tasks_pending=2, first_poll_after=5.0))
    clock.now += 9
    progress.observe(ClientActivity(tasks_pending=2, polls_sent=2, first_poll_after=5.0))
    assert stream.getvalue().splitlines() == [
        "waiting: 2 tasks submitted, first poll in ~5s",  # not again for the countdown
        "waiting: 2 tasks submitted, 2 polls sent, none done yet",
        "progress: 0/2 settled · elapsed 11s · waiting: 2 tasks submitted, 2 polls sent,"
        " none done yet",
    ]


def test_an_item_paid_for_but_not_finished_is_not_called_failed() -> None:
    stream = io.StringIO()
    progress = PlainProgress(ProgressState(2, FakeClock()), stream)
    progress.on_event("finished", outcome("slow.jpg", ItemState.SUBMITTED, code="TaskTimeoutError"))
    progress.on_event("finished", outcome("gone.jpg", ItemState.FAILED, code="ERROR_X\x1b[2J"))
    lines = stream.getvalue().splitlines()
    assert lines[0] == (
        "[1/2] NOT DONE  slow.jpg: TaskTimeoutError (paid; the next run finishes it): no face"
    )
    assert lines[1] == "[2/2] FAILED    gone.jpg: ERROR_X\\x1b[2J: no face"  # escaped
    assert progress.state.failed == 2  # neither is done


def test_rich_progress_renders_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = RichProgress(ProgressState(2), stream, force_terminal=True)
    try:
        progress.on_event("started", None)
        progress.on_event("finished", outcome("[red]x.jpg", ItemState.FAILED, code="ERROR_X"))
        progress.on_event("started", None)
        progress.on_event("finished", outcome("y.jpg", ItemState.DOWNLOADED))
    finally:
        progress.close()
    text = stream.getvalue()
    assert "[red]x.jpg: ERROR_X" in text  # printed as text, not as markup
    assert "2/2" in text
    assert "1 failed" in text
    assert "elapsed 0s" in text  # the elapsed time says what it is
    assert "y.jpg" not in text  # items that went well are not listed without -v


def test_rich_progress_with_verbose_lists_every_item_with_details() -> None:
    stream = io.StringIO()
    state = ProgressState(1, concurrency=4)
    progress = RichProgress(state, stream, force_terminal=True, verbose=True)
    try:
        progress.on_event("started", None)
        progress.observe(ClientActivity(requests_in_flight=1))
        progress.on_event("finished", outcome("y.jpg", ItemState.DOWNLOADED))
    finally:
        progress.close()
    text = stream.getvalue()
    assert "ok        y.jpg -> out/y.jpg.png [at " in text
    assert "in progress" in text


def test_display_helpers() -> None:
    assert display_text("plain name.jpg") == "plain name.jpg"
    assert display_text("a\nb\x1b") == "a\\nb\\x1b"
    assert [format_duration(s) for s in (0, 59.4, 61, 3600 + 120)] == [
        "0s",
        "59s",
        "1m01s",
        "1h02m",
    ]


# --------------------------------------------------------------------------- crash and resume


def journal_counts(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return Counter()
    return Counter(dict(rows))


class CliRun:
    """``ailab-async`` in a subprocess against a simulator (or proxy) this test hosts, so the
    simulator's ledger stays readable after the CLI is killed."""

    def __init__(self, tmp_path: Path, base_url: str, api_key: str) -> None:
        self.tmp_path = tmp_path
        self.base_url = base_url
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AILAB_")}
        self.env["AILAB_API_KEY"] = api_key

    async def start(self, log: str, *argv: str) -> asyncio.subprocess.Process:
        command = [sys.executable, "-m", "ailab_async.cli", *argv, "--base-url", self.base_url]
        with open(self.tmp_path / log, "wb") as sink:
            return await asyncio.create_subprocess_exec(
                *command, stdout=sink, stderr=asyncio.subprocess.STDOUT, env=self.env
            )

    async def finish(self, process: asyncio.subprocess.Process, timeout: float = 60) -> int:
        try:
            return await asyncio.wait_for(process.wait(), timeout=timeout)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    def log(self, name: str) -> str:
        return (self.tmp_path / name).read_text()


async def wait_for_journal(
    path: Path,
    process: asyncio.subprocess.Process,
    ready: Callable[[Counter[str]], bool],
    *,
    log: Path,
    timeout: float = 25,
) -> Counter[str]:
    """Poll the journal (read-only) until ``ready(states)``; the states then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        states = journal_counts(path)
        if ready(states):
            return states
        assert process.returncode is None, log.read_text()
        assert loop.time() < deadline, f"never reached the wanted journal state: {states}"
        await asyncio.sleep(0.05)


#: The summary's item lines: every item is in exactly one of them.
ITEM_LINES = ("downloaded", "already done", "failed", "not finished", "not processed")


def summary_counts(log: str) -> dict[str, int]:
    """The end summary's numbers: ``total``, each item line (0 when absent), ``resumed``
    (a part of downloaded) and ``sent again``."""
    [total] = re.findall(r"^summary: (\d+) items?\b", log, re.M)
    counts = {"total": int(total), "resumed": 0, "sent again": 0}
    for name in ITEM_LINES:
        found = re.findall(rf"^  {name} +(\d+)", log, re.M)
        counts[name] = int(found[-1]) if found else 0
    resumed = re.search(r"^  downloaded +\d+ \((\d+) of them resumed", log, re.M)
    if resumed:
        counts["resumed"] = int(resumed[1])
    resent = re.search(r"^sent again: (\d+) request", log, re.M)
    if resent:
        counts["sent again"] = int(resent[1])
    return counts


def assert_summary_adds_up(log: str) -> dict[str, int]:
    counts = summary_counts(log)
    assert sum(counts[name] for name in ITEM_LINES) == counts["total"], log
    assert counts["resumed"] <= counts["downloaded"]
    return counts


@pytest.mark.parametrize("kill_point", ["between requests", "anywhere"])
async def test_killed_mid_batch_and_rerun_pays_for_nothing_twice(
    tmp_path: Path, kill_point: str
) -> None:
    count = 30
    photos = tmp_path / "photos"
    inputs = make_photos(photos, count, size=160)
    out = tmp_path / "out"
    journal = out / ".ailab-journal.sqlite3"
    config = SimulatorConfig(
        tasks=TaskBehaviour(duration=Uniform(1.0, 4.0)),
        # Submissions take a while: "anywhere" kills with some of them in flight.
        latency=Latency(smart_beauty=Uniform(0.05, 0.4)),
        seed=11,
    )
    async with Simulator(config) as sim:
        cli = CliRun(tmp_path, sim.url, sim.api_key)
        argv = ["beauty", str(photos), "--out", str(out), "--poll-interval", "0.5"]
        first = await cli.start("first.log", *argv)
        try:
            if kill_point == "between requests":
                # Some results on disk, some tasks still running remotely, and no billed
                # request in flight: nothing may be paid twice.
                def ready(states: Counter[str]) -> bool:
                    return (
                        sum(states.values()) == count
                        and states["downloaded"] >= 1
                        and states["submitted"] >= 1
                        and states["pending"] + states["sending"] == 0
                    )
            else:
                # With billed requests in flight (the journal says SENDING): each may have
                # been paid for, and nothing can know; the rerun sends them again and says so.
                def ready(states: Counter[str]) -> bool:
                    return states["sending"] >= 1 and states["submitted"] >= 1

            await wait_for_journal(journal, first, ready, log=tmp_path / "first.log")
        finally:
            first.kill()  # SIGKILL: no cleanup, no flush
            await first.wait()
        in_flight_at_kill = journal_counts(journal)["sending"]

        second = await cli.start("second.log", *argv)
        code = await cli.finish(second, timeout=30)
        log = cli.log("second.log")
        assert code == 0, log

        ledger = await check_ledger(sim, inputs, journals=[journal], every_input_paid=True)
        summary = assert_summary_adds_up(log)
        resent = summary["sent again"]
        # The CLI's own account of what may have been paid twice matches the journal's...
        assert resent == in_flight_at_kill == sum(b.interrupted_sends for b in ledger.inputs)
        # ...and bounds the bill: every photo once, plus at most one per counted resend.
        assert ledger.total_paid <= count + resent
        assert sim.stats.count("smart-beauty", "OK") <= count + resent
        if kill_point == "between requests":
            assert sim.stats.duplicate_submits() == 0
            assert sim.stats.credits_spent == count
    expected = {f"photos/p{i:03d}_jpg.png" for i in range(count)}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == expected
    lines = manifest(out)
    assert len(lines) == count
    assert {line["state"] for line in lines} == {"downloaded"}
    assert {Path(line["input"]).name for line in lines} == {f"p{i:03d}.jpg" for i in range(count)}
    assert summary["already done"] + summary["downloaded"] == count
    if kill_point == "between requests":
        assert summary["already done"] >= 1  # downloaded before the kill
        assert summary["resumed"] >= 1  # submitted before the kill, tracked by task_id


async def test_a_second_run_on_the_same_out_stops_before_paying(tmp_path: Path) -> None:
    count = 4
    photos = tmp_path / "photos"
    inputs = make_photos(photos, count, size=160)
    out = tmp_path / "out"
    journal = out / ".ailab-journal.sqlite3"
    # Simulator time stands still until the test moves it: the first run's tasks stay
    # unfinished (and the run busy) for as long as the test needs, however slow the machine.
    clock = ManualClock()
    config = SimulatorConfig(tasks=TaskBehaviour(duration=Fixed(1.0)))
    async with Simulator(config, clock=clock) as sim:
        cli = CliRun(tmp_path, sim.url, sim.api_key)
        argv = ["beauty", str(photos), "--out", str(out), "--poll-interval", "0.5"]
        first = await cli.start("first.log", *argv)
        try:
            await wait_for_journal(
                journal, first, lambda states: states["submitted"] >= 1, log=tmp_path / "first.log"
            )
            paid_before = sim.stats.count("smart-beauty")
            second = await cli.start("second.log", *argv)
            code = await cli.finish(second, timeout=20)
            log = cli.log("second.log")
            assert code == 2, log
            assert "ailab-async beauty: error: journal" in log
            assert "is in use by another run" in log
            assert "Traceback" not in log
            assert "summary" not in log
            assert first.returncode is None  # the second run disturbed nothing
            clock.advance(60.0)  # the tasks finish
            first_code = await cli.finish(first, timeout=30)
        finally:
            if first.returncode is None:
                first.kill()
                await first.wait()
        assert first_code == 0, cli.log("first.log")
        assert summary_counts(cli.log("first.log"))["downloaded"] == count
        assert paid_before <= sim.stats.count("smart-beauty") <= count
        await check_ledger(sim, inputs, journals=[journal], every_input_paid=True)
        assert sim.stats.credits_spent == count
    assert [line["state"] for line in manifest(out)] == ["downloaded"] * count


class PollRefusingProxy:
    """Forwards API calls to the simulator, except task queries while ``refusing``: those
    get 429 ``EXCEEDING_LIMITS`` with ``Retry-After`` (a rate limit that never lifts)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.refusing = True
        self.refused = 0
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self.handle)
        self.runner = web.AppRunner(app)
        self.url = ""

    async def __aenter__(self) -> PollRefusingProxy:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        if self.refusing and request.path == "/api/common/query-async-task-result":
            self.refused += 1
            body = {
                "request_id": "req-429",
                "log_id": "log-429",
                "error_code": 429,
                "error_detail": {"status_code": 429, "code": "EXCEEDING_LIMITS", "message": "slow"},
            }
            return web.json_response(body, status=429, headers={"Retry-After": "1"})
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in ("content-type", "ailabapi-api-key")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.path_qs,
                data=await request.read(),
                headers=headers,
            ) as answer,
        ):
            return web.Response(
                body=await answer.read(),
                status=answer.status,
                content_type=answer.content_type,
            )


async def test_retry_failed_after_polls_were_refused_pays_once_per_photo(tmp_path: Path) -> None:
    count = 3
    photos = tmp_path / "photos"
    inputs = make_photos(photos, count, size=160)
    out = tmp_path / "out"
    journal = out / ".ailab-journal.sqlite3"
    config = SimulatorConfig(tasks=TaskBehaviour(duration=Fixed(0.2)))
    async with Simulator(config) as sim, PollRefusingProxy(sim.url) as proxy:
        cli = CliRun(tmp_path, proxy.url, sim.api_key)
        argv = ["beauty", str(photos), "--out", str(out), "--poll-interval", "0.25"]
        first = await cli.start("first.log", *argv, "--task-timeout", "1.5")
        code = await cli.finish(first, timeout=30)
        log = cli.log("first.log")
        assert code == 1, log  # nothing done: the tasks could not be queried
        assert proxy.refused >= count
        summary = assert_summary_adds_up(log)
        assert summary["downloaded"] == 0
        assert summary["not finished"] == count  # paid for, still alive: not "failed"
        assert summary["failed"] == 0
        assert "TaskTimeoutError" in log
        assert "run the same command again" in log
        assert sim.stats.count("smart-beauty", "OK") == count

        proxy.refusing = False
        second = await cli.start("second.log", *argv, "--retry-failed")
        code = await cli.finish(second, timeout=30)
        log = cli.log("second.log")
        assert code == 0, log
        summary = assert_summary_adds_up(log)
        assert summary["resumed"] == summary["downloaded"] == count  # tracked, not sent again
        await check_ledger(sim, inputs, journals=[journal], every_input_paid=True)
        assert sim.stats.count("smart-beauty", "OK") == count
        assert sim.stats.credits_spent == count
    assert [line["state"] for line in manifest(out)] == ["downloaded"] * count


def test_no_report_writes_no_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert main(["skin", str(tmp_path / "in"), "--out", str(out), "--simulate", "--no-report"]) == 0
    assert "report:" not in capsys.readouterr().out
    assert (out / "manifest.jsonl").is_file()
    assert not (out / "report.html").exists()
