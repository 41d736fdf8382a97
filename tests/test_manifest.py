"""The manifest line (``ailab_async.batch._manifest``): one typed line, the same JSON keys and
values for every runner. Pure: built from rows and outcomes, no API, no event loop."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import attrs
import pytest

from ailab_async.batch import (
    BatchItem,
    BatchSpec,
    How,
    ItemOutcome,
    ManifestLine,
    Operation,
    error_line,
    manifest_line,
    outcome_line,
)
from ailab_async.batch.journal import ItemState, JournalEntry
from ailab_async.errors import APIError
from ailab_async.models import converter

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
OUT = Path("/out")
SPEC = BatchSpec(operation=Operation.SKIN, params={"retouch_degree": 1}, out_dir=OUT)
ITEM = BatchItem(Path("in/a.jpg"), "in/a.jpg")

#: The keys of every line, as ``manifest.jsonl`` has always had them.
CORE_KEYS = {
    "input", "relative", "operation", "params", "state", "output", "task_id", "request_id",
    "log_id", "error_code", "error_message", "retryable", "attempts", "interrupted_sends",
    "updated_at",
}  # fmt: skip


def downloaded_entry(output_path: str = "/out/in/a_jpg.png") -> JournalEntry:
    return JournalEntry(
        item_id=1,
        identity="id",
        operation="smart-skin",
        params='{"retouch_degree":1.0}',
        source="in/a.jpg",
        relative="in/a.jpg",
        state=ItemState.DOWNLOADED,
        created_at=T0,
        updated_at=T0,
        image_url="https://results.example/r.png?sig=secret",
        output_path=output_path,
        request_id="req-1",
        log_id="log-1",
        attempts=2,
        interrupted_sends=1,
        produced_at=T0,
    )


def test_a_journaled_line_has_exactly_the_manifest_keys_and_values() -> None:
    assert manifest_line(downloaded_entry(), SPEC) == {
        "input": "in/a.jpg",
        "relative": "in/a.jpg",
        "operation": "smart-skin",
        "params": {"retouch_degree": 1.0},
        "state": "downloaded",
        "output": "in/a_jpg.png",  # relative to the output directory
        "task_id": None,
        "request_id": "req-1",
        "log_id": "log-1",
        "error_code": None,
        "error_message": None,
        "retryable": None,
        "attempts": 2,
        "interrupted_sends": 1,
        "updated_at": "2025-03-01T12:00:00+00:00",
    }


def test_result_urls_never_reach_the_manifest() -> None:
    assert "sig=secret" not in ManifestLine.for_entry(downloaded_entry(), SPEC).to_json()


def test_an_output_outside_the_output_directory_is_kept_whole() -> None:
    line = ManifestLine.for_entry(downloaded_entry("/elsewhere/a.png"), SPEC)
    assert line.output == "/elsewhere/a.png"


def test_an_output_is_shown_only_once_downloaded() -> None:
    reserved = attrs.evolve(downloaded_entry(), state=ItemState.SUCCEEDED)
    assert ManifestLine.for_entry(reserved, SPEC).output is None


def test_an_unreadable_input_gets_a_failed_line_with_the_errors_code() -> None:
    error = APIError("busy", status=503, code="AI_SERVICE_ERROR", retryable=True)
    line = error_line(ITEM, SPEC, error)
    assert set(line) == CORE_KEYS
    assert line["state"] == "failed"
    assert (line["error_code"], line["retryable"], line["attempts"]) == (
        "AI_SERVICE_ERROR",
        True,
        0,
    )
    assert line["params"] == {"retouch_degree": 1.0}  # normalised, as the journal keeps them
    assert line["updated_at"] is None


@pytest.mark.parametrize("how", list(How))
def test_an_outcome_line_adds_how_as_its_string(how: How) -> None:
    outcome = ItemOutcome(
        item=ITEM, state=ItemState.DOWNLOADED, how=how.value, entry=downloaded_entry()
    )
    line = outcome_line(outcome, SPEC)
    assert set(line) == CORE_KEYS | {"how"}
    assert line["how"] == how.value
    assert json.loads(json.dumps(line))["how"] == how.value


def test_an_outcome_without_a_row_keeps_its_error() -> None:
    outcome = ItemOutcome(
        item=ITEM, state=ItemState.FAILED, how="ran", error_code="FileNotFoundError"
    )
    line = outcome_line(outcome, SPEC)
    assert (line["error_code"], line["error_message"], line["retryable"]) == (
        "FileNotFoundError",
        "",
        False,
    )


def test_where_a_line_ran_appears_only_when_set() -> None:
    line = ManifestLine.for_entry(downloaded_entry(), SPEC)
    assert set(converter.unstructure(line)) == CORE_KEYS
    placed = attrs.evolve(line, how=How.RAN, partition="part-0001", worker="tcp://w:1", pid=7)
    unstructured = converter.unstructure(placed)
    assert set(unstructured) == CORE_KEYS | {"how", "partition", "worker", "pid"}
    assert (unstructured["partition"], unstructured["worker"], unstructured["pid"]) == (
        "part-0001",
        "tcp://w:1",
        7,
    )


def test_the_json_form_sorts_keys() -> None:
    text = ManifestLine.for_entry(downloaded_entry(), SPEC).to_json()
    assert list(json.loads(text)) == sorted(CORE_KEYS)
    assert "\n" not in text
