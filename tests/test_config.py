"""Client options, decided without a client: each rule accepts or refuses a value with the
error type and words users have always seen, and never echoes the key."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import math
from typing import Any

import attrs
import pytest

from ailab_async import AILabClient, ConfigurationError, PollingConfig, ValidationError
from ailab_async._config import (
    ClientSettings,
    LoopBinding,
    check_call_seconds,
    check_max_bytes,
    checked_api_key,
    checked_base_url,
    checked_submitted_at,
    is_loopback,
)
from ailab_async.models import Secret

SETTINGS = [field.name for field in attrs.fields(ClientSettings)]
#: The client's own defaults: the settings a client built with no options gets.
DEFAULTS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(AILabClient).parameters.items()
    if name in SETTINGS
}


def test_the_client_defaults_are_valid_settings() -> None:
    assert set(DEFAULTS) == set(SETTINGS)
    assert ClientSettings(**DEFAULTS).max_concurrency == 8


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"deadline": math.nan}, "deadline must be a positive, finite number of seconds"),
        ({"deadline": "5"}, "deadline must be a number of seconds, got str"),
        ({"deadline": -1}, "deadline must be a positive"),
        ({"deadline": 0}, "deadline must be a positive"),
        ({"deadline": math.inf}, "deadline must be a positive"),
        ({"deadline": True}, "deadline must be a number of seconds, got bool"),
        ({"timeout": math.nan}, "timeout must be a positive"),
        ({"timeout": "60"}, "timeout must be a number of seconds"),
        ({"timeout": math.inf}, "timeout must be a positive"),
        ({"timeout": 0}, "timeout must be a positive"),
        ({"task_timeout": math.nan}, "task_timeout must be a positive"),
        ({"task_timeout": -3}, "task_timeout must be a positive"),
        ({"task_timeout": math.inf}, "task_timeout must be a positive"),
        ({"backoff_initial": math.nan}, "backoff_initial must be a positive"),
        ({"backoff_max": math.inf}, "backoff_max must be a positive"),
        ({"backoff_initial": "1"}, "backoff_initial must be a number of seconds"),
        ({"backoff_initial": 5, "backoff_max": 1}, "0 < backoff_initial <= backoff_max"),
        ({"rate_limit": math.inf}, "rate_limit must be a positive, finite number"),
        ({"rate_limit": math.nan}, "rate_limit must be a positive, finite number"),
        ({"rate_limit": True}, "rate_limit must be a positive, finite number"),
        ({"rate_limit": -1}, "rate_limit must be a positive, finite number"),
        ({"rate_limit": "x"}, "rate_limit must be a positive, finite number"),
        ({"max_retries": True}, "max_retries must be an integer >= 0"),
        ({"max_retries": 1.5}, "max_retries must be an integer >= 0"),
        ({"max_retries": -1}, "max_retries must be an integer >= 0"),
        ({"max_concurrency": 2.0}, "max_concurrency must be an integer >= 1"),
        ({"max_concurrency": 0}, "max_concurrency must be an integer >= 1"),
        ({"retry_ambiguous": "no"}, "retry_ambiguous must be True or False"),
        ({"trust_env": 1}, "trust_env must be True or False"),
        ({"dangerously_allow_plain_http": "yes"}, "dangerously_allow_plain_http must be True"),
        ({"clock": 5}, "clock must be callable"),
        ({"sleep": "now"}, "sleep must be callable"),
        ({"polling": {"poll_share": 0.5}}, "polling must be a PollingConfig"),
    ],
)
def test_a_bad_setting_is_a_configuration_error_naming_it(
    kwargs: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigurationError, match=words.replace("(", r"\(")):
        ClientSettings(**{**DEFAULTS, **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"task_timeout": None},
        {"rate_limit": 2.5},
        {"rate_limit": 3},
        {"max_retries": 0},
        {"backoff_initial": 2.0, "backoff_max": 2.0},
        {"polling": PollingConfig()},
        {"clock": lambda: 0.0},
    ],
)
def test_good_settings_are_accepted(kwargs: dict[str, Any]) -> None:
    ClientSettings(**{**DEFAULTS, **kwargs})


# --- the key -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("abc-123\ndef-456", "control character at position 8"),
        ("abc-123\r\nX-Injected: 1", "control character"),
        ("abc\x00def", "control character"),
        ("abc\tdef", "control character"),
        ("abc\x7fdef", "control character"),
        ("abc\u2028def", "non-ASCII character"),
        ("kl\u00fcssel-123", "non-ASCII character"),  # latin-1, still not a key
        ("\u043a\u043b\u044e\u0447-123", "non-ASCII character"),
        (b"abc-123", "must be a string"),
        (12345, "must be a string"),
        ("   ", "no API key"),
        ("", "no API key"),
        (None, "set the AILAB_API_KEY environment variable"),
    ],
)
def test_an_unsendable_api_key_is_refused_without_echoing_it(key: object, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words) as info:
        checked_api_key(Secret(key))
    text = str(info.value) + repr(info.value)
    if isinstance(key, str) and key.strip():
        assert key not in text
        assert key[:3] not in text  # not even a part of it


def test_a_key_is_stripped_and_stays_hidden() -> None:
    checked = checked_api_key(Secret("  sk-123\n"))
    assert checked.reveal() == "sk-123"
    assert repr(checked) == "'***'"


# --- the base URL --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allow", "expected"),
    [
        ("https://www.ailabapi.com/", False, "https://www.ailabapi.com"),
        ("http://127.0.0.1:1234/", False, "http://127.0.0.1:1234"),
        ("http://localhost:1", False, "http://localhost:1"),
        ("http://[::1]:2", False, "http://[::1]:2"),
        ("http://api.example.com", True, "http://api.example.com"),
    ],
)
def test_usable_base_urls(url: str, allow: bool, expected: str) -> None:
    assert checked_base_url(url, allow_plain_http=allow) == expected


@pytest.mark.parametrize(
    ("url", "allow", "words"),
    [
        ("ftp://x", False, "must be an http(s) URL with a host"),
        ("www.ailabapi.com", False, "must be an http(s) URL with a host"),
        ("http://[::1", False, "must be an http(s) URL with a host"),
        ("http://api.example.com", False, "refusing to send the API key over plain HTTP"),
        ("http://api.example.com", "yes", "plain HTTP"),  # only True opens the door
        (42, False, "base_url must be a string, got int"),
    ],
)
def test_unusable_base_urls(url: object, allow: object, words: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        checked_base_url(url, allow_plain_http=allow)
    assert words in str(info.value)


def test_a_password_in_the_base_url_is_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as info:
        checked_base_url("ftp://user:hunter2@example.com/api", allow_plain_http=False)
    assert "hunter2" not in str(info.value)
    assert "***@example.com" in str(info.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("example.com", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_hosts(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# --- per-call arguments --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (math.nan, "range"),
        ("5", "type"),
        (-1, "range"),
        (0, "range"),
        (math.inf, "range"),
        (True, "type"),
    ],
)
def test_a_bad_per_call_duration_is_a_validation_error(value: object, rule: str) -> None:
    with pytest.raises(ValidationError, match="deadline") as info:
        check_call_seconds(value, "deadline")
    assert (info.value.input, info.value.rule) == ("deadline", rule)


@pytest.mark.parametrize("value", [None, 0.5, 30, 1e9])
def test_a_usable_per_call_duration_passes(value: object) -> None:
    check_call_seconds(value, "timeout")


@pytest.mark.parametrize("max_bytes", ["x", 0, -1, True, 1.5, None])
def test_a_bad_max_bytes_is_a_validation_error(max_bytes: object) -> None:
    with pytest.raises(ValidationError, match="max_bytes") as info:
        check_max_bytes(max_bytes)
    assert info.value.rule == "range"


NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    ("submitted_at", "rule", "words"),
    [
        (dt.datetime(2026, 1, 1, 12, 0), "timezone", "timezone-aware UTC"),
        ("2026-01-01T12:00:00Z", "type", "must be a datetime, got str"),
        (1767268800.0, "type", "must be a datetime, got float"),
        (dt.date(2026, 1, 1), "type", "must be a datetime, got date"),
    ],
)
def test_a_bad_submitted_at_is_a_validation_error(
    submitted_at: object, rule: str, words: str
) -> None:
    with pytest.raises(ValidationError, match=words) as info:
        checked_submitted_at(submitted_at, NOW)
    assert (info.value.input, info.value.rule) == ("submitted_at", rule)


def test_a_submitted_at_in_the_future_counts_as_now_and_any_zone_is_fine() -> None:
    assert checked_submitted_at(NOW + dt.timedelta(hours=3), NOW) == NOW
    tokyo = dt.timezone(dt.timedelta(hours=9))
    earlier = dt.datetime(2026, 1, 1, 20, 0, tzinfo=tokyo)  # 11:00 UTC
    assert checked_submitted_at(earlier, NOW) == earlier


# --- the event loop a client belongs to ----------------------------------------------------


def test_a_binding_takes_the_first_loop_and_refuses_others() -> None:
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        binding = LoopBinding()
        assert binding.owner_gone(second) is False  # never bound: close normally
        with pytest.raises(ConfigurationError, match="running event loop"):
            binding.enter(None)
        binding.enter(first)
        binding.enter(first)
        with pytest.raises(ConfigurationError, match="one AILabClient per event loop"):
            binding.enter(second)
        assert binding.owner_gone(first) is False
        with pytest.raises(ConfigurationError, match="create the client inside the loop"):
            binding.owner_gone(second)  # the owner still lives
        first.close()
        assert binding.owner_gone(second) is True  # the owner ended
    finally:
        first.close()
        second.close()
