"""The command line against hostile input: keys typed in the wrong place, servers and file
names that try to drive the terminal.

Usage errors must never echo a command-line value that could be a key; every string the
server sends (error codes, messages, request ids, credit bucket names) and every file name
reaches the terminal with its control characters escaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ailab_async.cli import main
from ailab_async.cli._output import logging_to_stderr
from ailab_async.cli._parser import HIDDEN, without_values
from ailab_async.cli._progress import display_text
from ailab_async.testing.simulator import sample_image

T = TypeVar("T")

#: Stands for a key typed where it does not belong; never a real-looking key.
SENTINEL = "zz-sentinel-secret-7f3a9c"


@pytest.fixture(autouse=True)
def _no_real_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AILAB_API_KEY", raising=False)
    monkeypatch.delenv("AILAB_BASE_URL", raising=False)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and everything printed (stdout + stderr), usage errors included."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# --------------------------------------------------------------------------- keys


def malformed_command_lines(tmp_path: Path) -> list[list[str]]:
    s = SENTINEL
    photos = str(tmp_path / "photos")
    batch = ["skin", photos, "--out", str(tmp_path / "out")]
    return [
        ["--api-key", s, "credits"],
        [f"--api-key={s}", "credits"],
        ["--api-k", s, "credits"],
        [s, "credits"],
        ["credits", "--api-key", s],
        ["credits", f"--api-key={s}"],
        ["credits", "--api-key=", s],
        ["credits", "--api-key-file", str(tmp_path / s)],  # a missing file
        ["credits", "--api-key-file", s],
        ["credits", "--api-kye", s],  # misspelt, then the key
        ["credits", "--apikey", s],
        ["credits", f"--apikey={s}"],
        ["credits", s],
        ["credits", "--key", s],
        ["credits", "--timeout", s],
        ["credits", "--base-url", s],
        ["credits", f"--base-url={s}"],
        ["credits", "--simulate", "--base-url", s],
        ["credits", f"--simulate={s}"],
        [f"-v{s}", "credits"],
        ["credits", f"-v{s}"],
        ["credits", f"-vv{s}"],
        ["credits", "--sim-failure-share", s],
        ["credits", "--sim-seed", s],
        ["credits", "--sim-credits", s],
        ["credits", "--sim-task-duration", s, "--simulate"],
        [*batch, "--api-key", s],
        [*batch, "--api-kye", s],
        [*batch, "--retouch", s],
        [*batch, "--concurrency", s],
        [*batch, "--rate", s],
        [*batch, "--poll-interval", s],
        [*batch, f"--quiet={s}"],
        [*batch, f"-q{s}"],
        ["skin", s, "--out", str(tmp_path / "out"), "--simulate"],  # the key as an input
        ["skin", "--apikey", s, photos, "--out", str(tmp_path / "out")],
        ["beauty", photos, "--out", str(tmp_path / "out"), "--level", s],
        ["sample-photos", str(tmp_path / "s"), "-n", s],
        ["sample-photos", str(tmp_path / "s"), f"-n{s}"],
        ["simulate", "--envelope", s],
        ["simulate", "--port", s],
        ["simulate", f"--fault={s}"],  # ambiguous abbreviation
        ["simulate", "--fault-5xx", s],
        ["simulate", "--task-duration", s, "--port", "-1"],
        [s],
    ]


def test_no_malformed_command_line_echoes_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the key given as a relative path names nothing here
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "p.jpg").write_bytes(sample_image(160, 160))
    for argv in malformed_command_lines(tmp_path):
        code, printed = run_cli(argv, capsys)
        assert code == 2, (argv, printed)
        assert SENTINEL not in printed, argv
        assert SENTINEL[3:-3] not in printed, argv  # nor a piece of it
        assert "Traceback" not in printed, argv


def test_usage_errors_name_the_option_not_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, printed = run_cli(["credits", "--api-kye", SENTINEL], capsys)
    assert code == 2
    assert f"unrecognized arguments: --api-kye {HIDDEN}" in printed
    code, printed = run_cli(["simulate", "--envelope", SENTINEL], capsys)
    assert f"argument --envelope: invalid choice: {HIDDEN}" in printed
    assert "'legacy', 'modern'" in printed  # the choices are ours: still shown
    code, printed = run_cli(["--api-key", SENTINEL, "credits"], capsys)
    assert "--api-key is not accepted" in printed
    assert "AILAB_API_KEY" in printed
    code, printed = run_cli(["credits", "--api-key-file", str(tmp_path / SENTINEL)], capsys)
    assert "cannot read the file given to --api-key-file" in printed
    code, printed = run_cli(["credits", "--timeout", SENTINEL], capsys)
    assert "argument --timeout: not a number" in printed


_TOKENS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(_TOKENS, max_size=3),
    after=st.lists(_TOKENS, max_size=3),
    shape=st.sampled_from(["{s}", "--api-key={s}", "--x={s}", "-v{s}", "-qv{s}"]),
    # Not simulate or sample-photos: a well-formed one would serve forever or write files.
    command=st.sampled_from(["credits", "skin", "beauty", "nope"]),
)
def test_a_key_anywhere_in_a_malformed_command_line_is_never_echoed(
    before: list[str], after: list[str], shape: str, command: str
) -> None:
    # In-process main, with stderr captured by hand (hypothesis and capsys do not mix).
    argv = [*before, command, shape.format(s=SENTINEL), *after]
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        contextlib.suppress(SystemExit),
    ):
        main(argv)
    printed = out.getvalue() + err.getvalue()
    assert SENTINEL not in printed
    assert "\x1b" not in printed


def test_hiding_values_keeps_option_names_and_choices() -> None:
    message = "argument COMMAND: invalid choice: 'sk-live-0123' (choose from 'skin', 'credits')"
    hidden = without_values(message, ["sk-live-0123", "credits"], {"skin", "credits"})
    assert hidden == f"argument COMMAND: invalid choice: {HIDDEN} (choose from 'skin', 'credits')"
    message = "ambiguous option: --fault=abcdef could match --fault-5xx, --fault-reset"
    assert without_values(message, ["--fault=abcdef"], set()) == (
        f"ambiguous option: --fault={HIDDEN} could match --fault-5xx, --fault-reset"
    )
    # Short values are hidden where quoted, left alone inside words.
    message = "argument --x: invalid choice: 'ab' (choose from 'abc')"
    assert without_values(message, ["ab"], {"abc"}) == (
        f"argument --x: invalid choice: {HIDDEN} (choose from 'abc')"
    )


# --------------------------------------------------------------------------- hostile servers

#: Characters that rewrite a terminal: ESC (CSI, OSC title), C1 CSI, carriage return,
#: backspace, bell, bidi overrides and isolates, a line separator.
HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m\r\b\u202e\u2066\u2028\x00"
FORBIDDEN = ["\x1b", "\x9b", "\r", "\b", "\x07", "\u202e", "\u2066", "\u2028", "\x00"]


def assert_terminal_safe(text: str) -> None:
    leaked = [repr(c) for c in FORBIDDEN if c in text]
    assert not leaked, (leaked, text)


def test_display_text_escapes_every_control_and_format_character() -> None:
    shown = display_text("name" + HOSTILE + "\u200b\u061c\udcff.jpg")
    assert shown.isprintable()
    assert_terminal_safe(shown)
    assert display_text(shown) == shown  # escaping twice changes nothing
    assert display_text("ünïcødé 照片 [bold].jpg") == "ünïcødé 照片 [bold].jpg"


def hostile_envelope(status: int, code: str) -> dict[str, Any]:
    return {
        "request_id": "req" + HOSTILE,
        "log_id": "log" + HOSTILE,
        "error_code": status,
        "error_code_str": code + HOSTILE,
        "error_msg": "msg" + HOSTILE,
        "error_detail": {
            "status_code": status,
            "code": code + HOSTILE,
            "code_message": "cm" + HOSTILE,
            "message": "message" + HOSTILE,
        },
    }


class ThreadedApp:
    """An ``aiohttp.web`` app on 127.0.0.1 (any free port), on its own loop and thread, for
    the in-process ``main`` (which runs its own loop)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner = web.AppRunner(app)
        self.url = ""

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=15)

    def __enter__(self) -> ThreadedApp:
        async def start() -> str:
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            host, port = self.runner.addresses[0][:2]
            return f"http://{host}:{port}"

        self.thread.start()
        self.url = self._call(start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=15)
        self.loop.close()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
def hostile_server() -> Iterator[Callable[[dict[str, Handler]], ThreadedApp]]:
    apps: list[ThreadedApp] = []

    def start(routes: dict[str, Handler]) -> ThreadedApp:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        threaded = ThreadedApp(app).__enter__()
        apps.append(threaded)
        return threaded

    yield start
    for threaded in apps:
        threaded.__exit__(None, None, None)


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key.txt"
    path.write_text("test-key-not-real-0123456789\n")
    path.chmod(0o600)
    return path


async def refused_key(request: web.Request) -> web.Response:
    return web.json_response(hostile_envelope(401, "ERROR_USER_NOT_EXISTS"), status=401)


async def unavailable(request: web.Request) -> web.Response:
    return web.json_response(hostile_envelope(404, "ERROR_AI_NOT_EXISTS"), status=404)


async def no_face(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response(hostile_envelope(422, "ERROR_NO_FACE_IN_FILE"), status=422)


async def hostile_buckets(request: web.Request) -> web.Response:
    body = hostile_envelope(200, "")
    body.update(error_code=0, error_code_str="", error_msg="")
    body["error_detail"] = {"status_code": 200, "code": "", "code_message": "", "message": ""}
    body["data"] = [
        {"unique_sign": "sign" + HOSTILE, "name": "bucket" + HOSTILE, "balance": 5, "total": 9}
    ]
    return web.json_response(body)


def test_the_final_error_line_escapes_what_the_server_sent(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    hostile_server: Callable[[dict[str, Handler]], ThreadedApp],
) -> None:
    server = hostile_server({"/api/common/query-credits": refused_key})
    argv = ["credits", "--base-url", server.url, "--api-key-file", str(key_file(tmp_path))]
    code, printed = run_cli(argv, capsys)
    assert code == 2
    assert "ERROR_USER_NOT_EXISTS" in printed
    assert "\\x1b[2J" in printed  # shown, escaped
    assert_terminal_safe(printed)


def test_credit_bucket_names_are_escaped(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    hostile_server: Callable[[dict[str, Handler]], ThreadedApp],
) -> None:
    server = hostile_server({"/api/common/query-credits": hostile_buckets})
    argv = ["credits", "--base-url", server.url, "--api-key-file", str(key_file(tmp_path))]
    code, printed = run_cli(argv, capsys)
    assert code == 0, printed
    assert "bucket\\x1b[2J" in printed
    assert_terminal_safe(printed)


@pytest.mark.parametrize("verbose", [[], ["-vv"]])
def test_a_batch_against_a_hostile_server_prints_nothing_raw(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    hostile_server: Callable[[dict[str, Handler]], ThreadedApp],
    verbose: list[str],
) -> None:
    folder = tmp_path / ("in" + "\u202e" + "gpj")
    folder.mkdir()
    (folder / "a\x1b[31m\r.jpg").write_bytes(sample_image(160, 160, seed=1))
    (folder / "b.jpg").write_bytes(sample_image(160, 160, seed=2))
    server = hostile_server(
        {
            "/api/common/query-credits": unavailable,  # the warning quotes it
            "/api/portrait/effects/smart-skin": no_face,  # progress lines and summary quote it
        }
    )
    argv = ["skin", str(folder), "--out", str(tmp_path / "out"), "--base-url", server.url]
    argv += ["--api-key-file", str(key_file(tmp_path)), *verbose]
    code, printed = run_cli(argv, capsys)
    assert code == 1, printed
    assert "could not check the credit balance" in printed
    assert "ERROR_NO_FACE_IN_FILE\\x1b[2J" in printed  # the item lines and the summary
    assert "failed          2" in printed
    assert_terminal_safe(printed)


def test_verbose_log_lines_escape_what_they_quote(capsys: pytest.CaptureFixture[str]) -> None:
    with logging_to_stderr(2):
        logging.getLogger("ailab_async.test").warning("server said %s", "hi" + HOSTILE)
    err = capsys.readouterr().err
    assert "server said hi\\x1b[2J" in err
    assert_terminal_safe(err)
