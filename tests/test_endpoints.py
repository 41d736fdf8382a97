"""The endpoint table: each endpoint's parameters are validated and put on the wire as the
API documents them, and the table agrees with the client's public methods."""

from __future__ import annotations

import inspect
from decimal import Decimal
from fractions import Fraction

import numpy
import pytest

from ailab_async import AILabClient, errors
from ailab_async._endpoints import (
    ENDPOINTS,
    QUERY_CREDITS,
    QUERY_TASK,
    SMART_BEAUTY,
    SMART_SKIN,
    CallKind,
    Endpoint,
    ImageRules,
    Param,
    ParamKind,
    check_degree,
)

# --- the wire form of each endpoint's parameters ---------------------------------------------


@pytest.mark.parametrize(
    ("value", "rule"),
    [(-0.1, "range"), (1.51, "range"), (float("nan"), "range"), ("1", "type"), (True, "type")],
)
def test_skin_degrees_out_of_range_are_rejected(value: object, rule: str) -> None:
    with pytest.raises(errors.ValidationError) as info:
        SMART_SKIN.fields(retouch_degree=value, whitening_degree=1.0)
    assert info.value.rule == rule
    assert info.value.input == "retouch_degree"


def test_skin_fields_at_bounds() -> None:
    assert SMART_SKIN.fields(retouch_degree=0, whitening_degree=1.5) == [
        ("retouch_degree", "0.0"),
        ("whitening_degree", "1.5"),
    ]


def test_beauty_fields() -> None:
    assert SMART_BEAUTY.fields(beauty_level=0.7, multi_face=True) == [
        ("task_type", "async"),
        ("beauty_level", "0.7"),
        ("multi_face", "1"),
    ]
    with pytest.raises(errors.ValidationError):
        SMART_BEAUTY.fields(beauty_level=1.2, multi_face=False)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (10**400, "range"),
        (-(10**400), "range"),
        (Fraction(10**400, 3), "range"),
        (Decimal("1e400"), "range"),
        (Decimal("NaN"), "range"),
        (Decimal("sNaN"), "range"),
        (Decimal("Infinity"), "range"),
        (float("inf"), "range"),
        (numpy.float64("nan"), "range"),
        (complex(1, 0), "type"),
        ("0.5", "type"),
        (None, "type"),
        (numpy.bool_(True), "type"),
        (numpy.array([0.5]), "type"),
    ],
)
def test_degree_checks_reject_every_unclean_number(value: object, rule: str) -> None:
    with pytest.raises(errors.ValidationError) as info:
        check_degree("retouch_degree", value, 0.0, 1.5)
    assert info.value.rule == rule
    assert info.value.input == "retouch_degree"


@pytest.mark.parametrize(
    ("value", "form"),
    [
        (Fraction(3, 2), "1.5"),
        (Decimal("0.25"), "0.25"),
        (numpy.float32(0.5), "0.5"),
        (numpy.float64(1.25), "1.25"),
        (numpy.int64(1), "1.0"),
        (1, "1.0"),
    ],
)
def test_degree_checks_accept_clean_real_numbers(value: object, form: str) -> None:
    assert check_degree("retouch_degree", value, 0.0, 1.5) == form


@pytest.mark.parametrize(
    ("value", "sent"),
    [(True, True), (False, False), (1, True), (0, False), (None, False), (numpy.bool_(True), True)],
)
def test_multi_face_accepts_clear_booleans(value: object, sent: bool) -> None:
    fields = SMART_BEAUTY.fields(beauty_level=1.0, multi_face=value)
    assert (("multi_face", "1") in fields) is sent


@pytest.mark.parametrize(
    "value", ["false", "no", "0", "1", "true", "", 2, -1, 0.0, 1.0, float("nan"), [], object()]
)
def test_multi_face_rejects_unclear_values(value: object) -> None:
    with pytest.raises(errors.ValidationError) as info:
        SMART_BEAUTY.fields(beauty_level=1.0, multi_face=value)
    assert info.value.rule == "type"
    assert info.value.input == "multi_face"


def test_a_parameter_not_given_is_not_sent_and_a_false_flag_is_left_out() -> None:
    # The API applies its own default (the table's): two fewer multipart parts per call.
    assert SMART_SKIN.fields() == []
    assert SMART_SKIN.fields(whitening_degree=0.5) == [("whitening_degree", "0.5")]
    assert SMART_BEAUTY.fields() == [("task_type", "async")]
    assert SMART_BEAUTY.fields(multi_face=False) == [("task_type", "async")]
    assert QUERY_CREDITS.fields() == []


def test_a_value_equal_to_the_default_is_still_sent_when_given() -> None:
    assert SMART_SKIN.fields(retouch_degree=1.0) == [("retouch_degree", "1.0")]


def test_a_required_parameter_not_given_is_refused() -> None:
    with pytest.raises(errors.ValidationError) as info:
        QUERY_TASK.fields()
    assert (info.value.input, info.value.rule) == ("task_id", "type")


def test_values_are_checked_in_wire_order() -> None:
    with pytest.raises(errors.ValidationError) as info:
        SMART_BEAUTY.fields(beauty_level="high", multi_face="yes")
    assert info.value.input == "beauty_level"


@pytest.mark.parametrize(
    ("endpoint", "name"),
    [(SMART_SKIN, "beauty_level"), (SMART_BEAUTY, "task_type"), (QUERY_CREDITS, "task_id")],
)
def test_an_unknown_or_fixed_parameter_is_refused_by_name(endpoint: Endpoint, name: str) -> None:
    with pytest.raises(errors.ValidationError, match=repr(name)) as info:
        endpoint.encode({name: 1})
    assert (info.value.input, info.value.rule) == (name, "unknown")


def test_a_fixed_parameter_always_sends_its_value() -> None:
    fixed = SMART_BEAUTY.param("task_type")
    assert not fixed.settable
    assert fixed.encode("sync") == "async"
    assert [param.name for param in SMART_BEAUTY.settable] == ["beauty_level", "multi_face"]


def test_a_task_id_is_sent_as_it_is() -> None:
    assert QUERY_TASK.fields(task_id="a1-B2_c3") == [("task_id", "a1-B2_c3")]


@pytest.mark.parametrize(
    ("task_id", "rule"),
    [
        (None, "type"),
        (123, "type"),
        ("", "length"),
        ("x" * 257, "length"),
        (" x ", "format"),
        ("abc\n", "format"),
        ("t\x00", "format"),
    ],
)
def test_a_malformed_task_id_is_refused(task_id: object, rule: str) -> None:
    with pytest.raises(errors.ValidationError) as info:
        QUERY_TASK.fields(task_id=task_id)
    assert (info.value.input, info.value.rule) == ("task_id", rule)


# --- the table itself ------------------------------------------------------------------------


def test_the_table_states_the_documented_endpoints() -> None:
    rows = {
        name: (e.method, e.path, e.billed, e.kind, e.image_field) for name, e in ENDPOINTS.items()
    }
    assert rows == {
        "smart-skin": (
            "POST",
            "/api/portrait/effects/smart-skin",
            True,
            CallKind.SYNC,
            "image",
        ),
        "smart-beauty": (
            "POST",
            "/api/portrait/effects/smart-beauty",
            True,
            CallKind.TASK_SUBMIT,
            "image_target",
        ),
        "query-async-task-result": (
            "GET",
            "/api/common/query-async-task-result",
            False,
            CallKind.QUERY,
            None,
        ),
        "query-credits": ("GET", "/api/common/query-credits", False, CallKind.QUERY, None),
    }


def test_an_image_field_goes_with_rules_naming_the_endpoint() -> None:
    rules = ImageRules("x", frozenset({"png"}), 1, None, 10)
    with pytest.raises(ValueError, match="goes with"):
        Endpoint("x", "POST", "/x", billed=True, image_field="image")
    with pytest.raises(ValueError, match="another endpoint"):
        Endpoint("y", "POST", "/y", billed=True, image_field="image", image_rules=rules)
    Endpoint("x", "POST", "/x", billed=True, image_field="image", image_rules=rules)


# The public method of each endpoint, and the arguments that are not parameters of the call.
PUBLIC_METHODS = [
    (SMART_SKIN, AILabClient.smart_skin),
    (SMART_BEAUTY, AILabClient.submit_smart_beauty),
    (SMART_BEAUTY, AILabClient.smart_beauty),
    (QUERY_CREDITS, AILabClient.credits),
]
NOT_PARAMETERS = {"self", "image", "deadline", "timeout"}


@pytest.mark.parametrize(("endpoint", "method"), PUBLIC_METHODS)
def test_each_public_method_mirrors_its_table_entry(endpoint: Endpoint, method: object) -> None:
    signature = inspect.signature(method)  # type: ignore[arg-type]
    arguments = [p for p in signature.parameters.values() if p.name not in NOT_PARAMETERS]
    # A number defaults to None (not sent: the API's default, the table's, applies); a flag
    # to its "no", which is not sent either.
    assert [(p.name, p.default) for p in arguments] == [
        (param.name, None if param.kind is ParamKind.NUMBER else param.default)
        for param in endpoint.settable
    ]
    assert all(param.optional for param in endpoint.settable)


def test_number_parameters_state_their_documented_ranges() -> None:
    ranges = {
        (e.name, p.name): (p.low, p.high, p.default)
        for e in ENDPOINTS.values()
        for p in e.params
        if p.kind is ParamKind.NUMBER
    }
    assert ranges == {
        ("smart-skin", "retouch_degree"): (0.0, 1.5, 1.0),
        ("smart-skin", "whitening_degree"): (0.0, 1.5, 1.0),
        ("smart-beauty", "beauty_level"): (0.0, 1.0, 1.0),
    }
    assert isinstance(SMART_SKIN.param("retouch_degree"), Param)
    with pytest.raises(KeyError):
        SMART_SKIN.param("nope")
