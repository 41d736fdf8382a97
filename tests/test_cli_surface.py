"""The ``ailab-async`` command line as a new user meets it, through ``main`` and a subprocess:
no command, ``--version``, each command's help, files that are not photos, ``-v`` on a run
that went well, what the display says before the first result, summaries that add up, and
size errors in the unit the rule is in.

Runs use ``--simulate`` (the in-process simulator) or a simulator this test hosts; never the
real API.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import ailab_async
from ailab_async.cli import _batch as _batch_cli
from ailab_async.cli import main
from ailab_async.testing.simulator import (
    Fixed,
    ManualClock,
    SimulatorConfig,
    TaskBehaviour,
    sample_image,
)

from .test_cli import (
    ITEM_LINES,
    ThreadedSimulator,
    assert_summary_adds_up,
    key_file,
    make_photos,
    manifest,
)


@pytest.fixture(autouse=True)
def _no_real_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AILAB_API_KEY", raising=False)
    monkeypatch.delenv("AILAB_BASE_URL", raising=False)


COMMANDS = ("skin", "beauty", "credits", "sample-photos", "simulate")

# --------------------------------------------------------------------------- no command, version


def test_no_command_prints_the_help_on_stderr_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main([])
    assert excinfo.value.code == 2  # a usage error, like every other one
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: ailab-async")
    assert all(f"    {command}" in captured.err for command in COMMANDS)
    assert "--version" in captured.err


def test_help_asked_for_goes_to_stdout_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert all(f"    {command}" in out for command in COMMANDS)


def test_the_installed_command_without_arguments_shows_the_help() -> None:
    command = [sys.executable, "-m", "ailab_async.cli"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "usage: ailab-async" in done.stderr
    assert "Traceback" not in done.stderr


def test_version_is_the_installed_distribution_s(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["--version"])
    assert excinfo.value.code == 0
    version = importlib.metadata.version("ailab-async")
    assert capsys.readouterr().out == f"ailab-async {version}\n"
    assert version == ailab_async.__version__


# --------------------------------------------------------------------------- each command's help

TASK_OPTIONS = ["--poll-interval", "--task-timeout", "--sim-task-duration", "--sim-failure-share"]
CONNECTION = ["--base-url", "--simulate", "--api-key-file", "--timeout", "--verbose"]
SIM = ["--sim-latency", "--sim-credits", "--sim-seed"]
BATCH = ["--out", "--journal", "--retry-failed", "--reassign-account", "--concurrency", "--rate"]


@pytest.mark.parametrize(
    ("command", "listed", "not_listed"),
    [
        ("skin", ["--retouch", "--whitening", *BATCH, *CONNECTION, *SIM], TASK_OPTIONS),
        ("beauty", ["--level", "--multi-face", *BATCH, *CONNECTION, *SIM, *TASK_OPTIONS], []),
        ("credits", [*CONNECTION, *SIM], [*TASK_OPTIONS, *BATCH, "--quiet"]),
        ("sample-photos", ["-n", "--size", "--seed"], [*CONNECTION, *BATCH]),
    ],
)
def test_each_command_s_help_lists_only_the_options_that_apply_to_it(
    capsys: pytest.CaptureFixture[str], command: str, listed: list[str], not_listed: list[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main([command, "--help"])
    assert excinfo.value.code == 0
    # The options a help declares (an indented line starting with one), not those its
    # prose mentions.
    declared = re.findall(r"^  (-[\w-]+)(?:, (--[\w-]+))?", capsys.readouterr().out, re.M)
    options = {name for names in declared for name in names if name}
    assert set(listed) <= options
    assert not set(not_listed) & options


@pytest.mark.parametrize(
    "argv",
    [
        ["skin", "in", "--out", "o", "--poll-interval", "1"],
        ["skin", "in", "--out", "o", "--task-timeout", "9"],
        ["skin", "in", "--out", "o", "--simulate", "--sim-task-duration", "1"],
        ["credits", "--simulate", "--sim-failure-share", "0.5"],
    ],
)
def test_an_option_that_does_not_apply_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_concurrency_s_help_and_the_display_use_the_same_words(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["beauty", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--concurrency N HTTP requests in flight at most (default 8)" in text
    assert "photos are in progress" in text


# --------------------------------------------------------------------------- other files


def folder_with_other_files(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    make_photos(folder, 2)
    (folder / "notes.txt").write_text("not a photo")
    (folder / "raw").mkdir()
    (folder / "raw" / "p000.cr2").write_bytes(b"a raw file")
    return folder


def skin(capsys: pytest.CaptureFixture[str], folder: Path, out: Path, *extra: str) -> str:
    """``ailab-async skin FOLDER --out OUT --simulate EXTRA...``, which must succeed; its
    stdout."""
    code = main(["skin", str(folder), "--out", str(out), "--simulate", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_files_that_are_not_photos_are_counted_in_the_header_and_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = folder_with_other_files(tmp_path)
    out = skin(capsys, folder, tmp_path / "out")
    header = out.splitlines()[0]
    assert header.startswith("skin: 2 photos, 2 other files skipped (not .bmp .jpeg .jpg .png)")
    assert "notes.txt" not in out  # named only with -v
    assert "summary: 2 items (2 other files in the input folders skipped)" in out
    assert len(manifest(tmp_path / "out")) == 2
    # -v names them; -q still counts them, in the summary.
    out = skin(capsys, folder, tmp_path / "out", "-v")
    assert f"  skipped, not a photo: {folder / 'notes.txt'}\n" in out
    assert f"  skipped, not a photo: {folder / 'raw' / 'p000.cr2'}\n" in out
    out = skin(capsys, folder, tmp_path / "out", "-q")
    assert out.startswith("summary: 2 items (2 other files in the input folders skipped)")


def test_a_folder_with_no_photos_says_what_it_found_instead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.pdf").write_bytes(b"%PDF")
    (tmp_path / "docs" / "b.heic").write_bytes(b"heic")
    argv = ["skin", str(tmp_path / "docs"), "--out", str(tmp_path / "out"), "--simulate"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no input images found in" in err
    assert "(looked for .bmp .jpeg .jpg .png; 2 other files there)" in err


# --------------------------------------------------------------------------- -v on a good run


def test_verbose_shows_each_item_s_details_and_the_client_s_counters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    argv = ["beauty", str(tmp_path / "in"), "--out", str(out), "--simulate", "-v"]
    argv += ["--sim-task-duration", "0.05", "--poll-interval", "0.05"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    items = [line for line in captured.out.splitlines() if line.startswith("[")]
    lines = {Path(line["input"]).name: line for line in manifest(out)}
    assert len(items) == 2
    for line in items:
        name = re.search(r"in/(p\d+\.jpg)", line)
        assert name is not None
        entry = lines[name[1]]
        assert re.search(r"\[at \d+\.\ds, ", line)
        assert f"request {entry['request_id']}" in line
        assert re.search(rf"task {entry['task_id']} done \d+\.\ds after submit", line)
    assert re.search(
        r"^requests: \d+ sent, 0 retried \(0 rate-limited\), "
        r"(no rate limit in force|rate limit \d+\.\d/s at the end); "
        r"\d+ task polls; elapsed \d+s$",
        captured.out,
        re.M,
    )
    everything = captured.out + captured.err
    assert "/results/" not in everything  # result URLs are never shown
    assert "sim-key-000" not in everything


def test_verbose_lists_items_already_done_too_and_plain_runs_show_no_details(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photos(tmp_path / "in", 2)
    out = skin(capsys, tmp_path / "in", tmp_path / "out")
    assert "requests:" not in out
    assert "[at " not in out
    out = skin(capsys, tmp_path / "in", tmp_path / "out", "-v")
    done = [line for line in out.splitlines() if "(already done) [at " in line]
    assert len(done) == 2


# --------------------------------------------------------------------------- waiting, resuming


def test_waiting_then_resuming_and_every_summary_adds_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_batch_cli, "_TICK_SECONDS", 0.02)
    folder = tmp_path / "in"
    make_photos(folder, 2)
    out = tmp_path / "out"
    # Simulator time stands still until the test moves it: the tasks stay unfinished.
    clock = ManualClock()
    config = SimulatorConfig(tasks=TaskBehaviour(duration=Fixed(1.0)))
    with ThreadedSimulator(config, clock) as sim:
        argv = ["beauty", str(folder), "--out", str(out), "--base-url", sim.url]
        argv += ["--api-key-file", str(key_file(tmp_path, sim.api_key))]

        # 1. The tasks outlive --task-timeout.
        assert main([*argv, "--task-timeout", "2"]) == 1
        log = capsys.readouterr().out
        waiting = re.search(
            r"^waiting: 2 tasks submitted, "
            r"(first poll in ~\d+s|first poll due|\d+ polls? sent, none done yet)$",
            log,
            re.M,
        )
        assert waiting is not None, log
        assert log.index(waiting[0]) < log.index("NOT DONE")  # said before the first result
        counts = assert_summary_adds_up(log)
        assert (counts["total"], counts["not finished"]) == (2, 2)

        # 2. The tasks are done now; a photo with no face joins the batch.
        clock.advance(10.0)
        Image.new("RGB", (300, 300), (128, 128, 128)).save(folder / "blank.jpg")
        assert main(argv) == 1
        log = capsys.readouterr().out
        assert "  downloaded      2 (2 of them resumed: paid for by an earlier run)" in log
        counts = assert_summary_adds_up(log)
        assert (counts["total"], counts["downloaded"], counts["resumed"]) == (3, 2, 2)
        assert counts["failed"] == 1
        assert "errors by code:\n  ERROR_NO_FACE_IN_FILE" in log

        # 3. Nothing left to do.
        assert main(argv) == 1
        counts = assert_summary_adds_up(capsys.readouterr().out)
        assert (counts["already done"], counts["failed"], counts["resumed"]) == (2, 1, 0)
        assert sim.stats.count("smart-beauty", "OK") == 2  # the resumed tasks: paid once


def test_a_summary_with_nothing_but_downloads_adds_up_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photos(tmp_path / "in", 1)
    counts = assert_summary_adds_up(skin(capsys, tmp_path / "in", tmp_path / "out"))
    assert counts == {**dict.fromkeys(ITEM_LINES, 0), "downloaded": 1} | {
        "total": 1,
        "resumed": 0,
        "sent again": 0,
    }


# --------------------------------------------------------------------------- sizes


def test_an_image_over_the_size_limit_is_refused_in_mib(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    # A valid JPEG header, then padding: 6 MiB + 1 byte, over smart-skin's 6 MiB.
    data = sample_image(160, 160)
    (folder / "big.jpg").write_bytes(data + b"\0" * (6 * 1024 * 1024 + 1 - len(data)))
    argv = ["skin", str(folder), "--out", str(tmp_path / "out"), "--simulate"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if "big.jpg" in line]
    assert "6291457 bytes is over the 6 MiB limit" in line
    assert " MB" not in line
