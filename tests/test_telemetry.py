"""OpenTelemetry against the simulator: spans, metrics, context, the off switch, no secrets.

Each test gives its client an SDK tracer provider with an in-memory span exporter and a
meter provider with an in-memory reader (``Telemetry(...)``), so nothing global changes. The
simulator runs on a manual clock that the client's sleeper advances: no real waiting.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ailab_async import AILabClient, AuthenticationError, ConfigurationError
from ailab_async.telemetry import Telemetry
from ailab_async.testing.simulator import (
    Faults,
    ManualClock,
    RateLimit,
    Simulator,
    SimulatorConfig,
    TaskBehaviour,
    Uniform,
    sample_image,
)

IMAGE = sample_image(256, 256)


@attrs.define
class Otel:
    """SDK providers with in-memory exporters, and readers of what they hold."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    @property
    def telemetry(self) -> Telemetry:
        return Telemetry(tracer_provider=self.tracer_provider, meter_provider=self.meter_provider)

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        spans = list(self.spans.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return [
            s
            for s in self.finished()
            if s.parent is not None and s.parent.span_id == parent.context.span_id
        ]

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        found.extend(m.data.data_points)
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(exporter, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def ailab_simulator_clock(clock: ManualClock) -> ManualClock:
    return clock


def client_for(sim: Simulator, clock: ManualClock, **options: Any) -> AILabClient:
    options.setdefault("api_key", sim.api_key)
    # A task's wait has no timeout: the manual clock would pass any timeout at once.
    options.setdefault("task_timeout", None)
    return AILabClient(
        base_url=sim.url, clock=clock.now, sleep=clock.sleep, random=lambda: 0.5, **options
    )


@pytest.fixture
async def client(
    ailab_simulator: Simulator, clock: ManualClock, otel: Otel
) -> AsyncIterator[AILabClient]:
    async with client_for(ailab_simulator, clock, telemetry=otel.telemetry) as client:
        yield client


def attrs_of(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


# --- spans ------------------------------------------------------------------------------------


async def test_a_call_is_a_client_span_with_one_attempt_span_under_it(
    client: AILabClient, ailab_simulator: Simulator, otel: Otel
) -> None:
    result = await client.smart_skin(IMAGE, retouch_degree=0.5)
    [call] = otel.finished("ailab smart-skin")
    [attempt] = otel.children(call)
    assert call.kind is SpanKind.CLIENT
    assert attempt.kind is SpanKind.CLIENT
    assert attempt.name == "POST"
    port = int(ailab_simulator.url.rsplit(":", 1)[1])
    common = {
        "ailab.endpoint": "smart-skin",
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "server.port": port,
        "http.response.status_code": 200,
        "ailab.request_id": result.request_id,
    }
    assert common.items() <= attrs_of(call).items()
    assert common.items() <= attrs_of(attempt).items()
    assert attrs_of(call)["ailab.retry_count"] == 0
    assert "ailab.log_id" in attrs_of(call)
    assert call.status.status_code is StatusCode.UNSET
    assert "error.type" not in attrs_of(call)
    assert call.parent is None  # no caller span: a root


async def test_metrics_count_the_call_its_attempt_and_the_limiters_rate(
    client: AILabClient, otel: Otel
) -> None:
    await client.smart_skin(IMAGE)
    [duration] = otel.points("http.client.request.duration")
    assert duration.count == 1
    assert duration.attributes["http.response.status_code"] == 200
    assert duration.attributes["ailab.endpoint"] == "smart-skin"
    [calls] = otel.points("ailab.client.calls")
    assert (calls.value, calls.attributes["ailab.outcome"]) == (1, "ok")
    rates = otel.points("ailab.client.rate_limit")
    # Probing (no rate known yet) observes nothing; any value observed is positive.
    assert all(point.value > 0 for point in rates)


async def test_caller_span_is_the_parent_of_the_call(client: AILabClient, otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("the web app")
    with tracer.start_as_current_span("GET /retouch") as request_span:
        await client.smart_skin(IMAGE)
        await asyncio.gather(client.credits(), client.credits())
    [web] = otel.finished("GET /retouch")
    calls = [s for s in otel.finished() if s.name.startswith("ailab ")]
    assert len(calls) == 3
    for call in calls:
        assert call.parent is not None
        assert call.parent.span_id == request_span.get_span_context().span_id
        assert call.context.trace_id == web.context.trace_id


@pytest.mark.ailab_simulator(faults=Faults(error_503=0.3, endpoints=frozenset({"smart-skin"})))
async def test_a_retried_call_has_a_span_per_attempt_and_its_retry_count(
    client: AILabClient, otel: Otel
) -> None:
    for _ in range(10):
        await client.smart_skin(IMAGE)
    calls = otel.finished("ailab smart-skin")
    assert len(calls) == 10
    retried = 0
    for call in calls:
        attempts = sorted(otel.children(call), key=lambda s: s.start_time or 0)
        retries = attrs_of(call)["ailab.retry_count"]
        assert len(attempts) == retries + 1
        assert [e.name for e in call.events] == ["retry scheduled"] * retries
        for number, attempt in enumerate(attempts):
            assert attrs_of(attempt).get("http.request.resend_count", 0) == number
        for failed in attempts[:-1]:
            assert attrs_of(failed)["http.response.status_code"] == 503
            assert attrs_of(failed)["error.type"] == "ServerError"
            assert failed.status.status_code is StatusCode.ERROR
        assert attempts[-1].status.status_code is StatusCode.UNSET
        retried += retries > 0
    assert retried  # the seeded faults did hit some calls
    statuses = {
        p.attributes.get("http.response.status_code")
        for p in otel.points("http.client.request.duration")
    }
    assert statuses == {200, 503}


@pytest.mark.ailab_simulator(rate_limit=RateLimit(requests_per_second=1.0, burst=1))
async def test_429s_are_attempt_spans_span_events_and_a_counter(
    client: AILabClient, otel: Otel
) -> None:
    await asyncio.gather(*(client.credits() for _ in range(4)))
    limited = [s for s in otel.finished("GET") if attrs_of(s)["http.response.status_code"] == 429]
    assert limited
    assert {attrs_of(s)["error.type"] for s in limited} == {"RateLimitedError"}
    assert {attrs_of(s)["ailab.error_code"] for s in limited} == {"EXCEEDING_LIMITS"}
    events = [e for s in otel.finished("ailab query-credits") for e in s.events]
    assert sum(e.name == "rate limited" for e in events) == len(limited)
    [counter] = otel.points("ailab.client.rate_limited")
    assert counter.value == len(limited)
    [calls] = otel.points("ailab.client.calls")
    assert calls.value == 4  # every call ended ok
    [rate] = otel.points("ailab.client.rate_limit")  # the limiter knows a rate now
    assert rate.value > 0


@pytest.mark.ailab_simulator(tasks=TaskBehaviour(duration=Uniform(2.0, 3.0)))
async def test_a_task_is_a_span_from_tracking_to_result_with_its_polls_under_it(
    client: AILabClient, otel: Otel
) -> None:
    tracer = otel.tracer_provider.get_tracer("the app")
    with tracer.start_as_current_span("job") as job:
        task = await client.submit_smart_beauty(IMAGE)
        await task
    [task_span] = otel.finished("ailab task")
    [submit] = otel.finished("ailab smart-beauty")
    polls = otel.finished("ailab query-async-task-result")
    assert polls
    job_id = job.get_span_context().span_id
    assert task_span.parent is not None
    assert task_span.parent.span_id == job_id
    assert submit.parent is not None
    assert submit.parent.span_id == job_id
    for poll in polls:
        assert poll.parent is not None
        assert poll.parent.span_id == task_span.context.span_id
        assert attrs_of(poll)["ailab.task_id"] == task.task_id
    assert attrs_of(task_span)["ailab.task_id"] == task.task_id
    assert attrs_of(task_span)["ailab.task.outcome"] == "succeeded"
    assert attrs_of(task_span)["ailab.task.polls"] == len(polls)
    assert [e.name for e in task_span.events] == ["poll"] * len(polls)
    [pending] = otel.points("ailab.client.tasks.pending")
    assert pending.value == 0  # up once, down once
    [lag] = otel.points("ailab.client.task.detection_lag")
    assert lag.count == 1


async def test_a_failed_call_is_an_error_span_and_counted_by_its_outcome(
    ailab_simulator: Simulator, clock: ManualClock, otel: Otel
) -> None:
    async with client_for(
        ailab_simulator, clock, api_key="not-the-key", telemetry=otel.telemetry
    ) as client:
        with pytest.raises(AuthenticationError):
            await client.smart_skin(IMAGE)
    [call] = otel.finished("ailab smart-skin")
    [attempt] = otel.children(call)
    for span in (call, attempt):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description is None  # never an error's message
        assert attrs_of(span)["error.type"] == "AuthenticationError"
        assert attrs_of(span)["http.response.status_code"] == 401
    [calls] = otel.points("ailab.client.calls")
    assert calls.attributes["ailab.outcome"] == "AuthenticationError"


# --- nothing secret ------------------------------------------------------------------------


def _texts(value: object) -> Iterator[str]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)
    else:
        yield str(value)


@pytest.mark.ailab_simulator(
    faults=Faults(error_503=0.3, html_502=0.2), tasks=TaskBehaviour(duration=Uniform(1.0, 2.0))
)
async def test_no_span_or_metric_attribute_holds_the_key_a_result_url_or_bytes(
    client: AILabClient, ailab_simulator: Simulator, otel: Otel
) -> None:
    result = await client.smart_skin(IMAGE)
    await client.download(result)
    beauty = await client.smart_beauty(IMAGE)
    await client.download(beauty)
    secrets = [ailab_simulator.api_key]
    for url in (result.image_url, beauty.image_url):
        secrets += [url, url.split("/results/", 1)[1]]
    texts: list[str] = []
    for span in otel.finished():
        texts.append(span.name)
        for name, value in (span.attributes or {}).items():
            texts += [name, *_texts(value)]
        for event in span.events:
            texts.append(event.name)
            for name, value in (event.attributes or {}).items():
                texts += [name, *_texts(value)]
        texts.append(str(span.status.description))
    data = otel.reader.get_metrics_data()
    assert data is not None
    metric_count = 0
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                metric_count += 1
                for point in metric.data.data_points:
                    for name, value in (point.attributes or {}).items():
                        texts += [name, *_texts(value)]
    assert metric_count >= 4  # durations, calls, tasks pending, detection lag
    assert len(otel.finished()) >= 8
    for text in texts:
        for secret in secrets:
            assert secret not in text
        assert "\\x" not in text
        assert "JFIF" not in text


# --- switching it on and off ---------------------------------------------------------------


@pytest.fixture
def global_providers(otel: Otel, monkeypatch: pytest.MonkeyPatch) -> Otel:
    """The application's configured providers, as ``opentelemetry.*.get_*_provider`` see
    them (patched for this test: the real globals can be set only once per process)."""
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: otel.tracer_provider)
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: otel.meter_provider)
    return otel


async def test_telemetry_is_on_by_default_once_the_application_configured_opentelemetry(
    ailab_simulator: Simulator, clock: ManualClock, global_providers: Otel
) -> None:
    async with client_for(ailab_simulator, clock) as client:
        await client.credits()
    assert len(global_providers.finished("ailab query-credits")) == 1


async def test_telemetry_false_records_nothing_and_installs_no_hook(
    ailab_simulator: Simulator, clock: ManualClock, global_providers: Otel
) -> None:
    async with client_for(ailab_simulator, clock, telemetry=False) as client:
        assert client._dispatcher.hooks is None
        await client.credits()
    assert global_providers.finished() == []
    assert global_providers.points("ailab.client.calls") == []


async def test_without_a_configured_provider_no_hook_is_installed(
    ailab_simulator: Simulator, clock: ManualClock
) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    async with client_for(ailab_simulator, clock) as client:
        assert client._dispatcher.hooks is None


async def test_the_sdk_works_with_opentelemetry_not_installed(
    ailab_simulator: Simulator, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)  # "import opentelemetry" now fails
    async with client_for(ailab_simulator, clock) as client:
        assert client._dispatcher.hooks is None
        assert (await client.smart_skin(IMAGE)).image_url
    with pytest.raises(ConfigurationError, match=r"ailab-async\[otel\]"):
        client_for(ailab_simulator, clock, telemetry=Telemetry())


def test_importing_the_sdk_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, ailab_async, ailab_async.sync, ailab_async.telemetry; "
        "print(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_a_telemetry_option_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="telemetry must be"):
        AILabClient(api_key="k", telemetry="yes")  # type: ignore[arg-type]


def test_the_blocking_client_keeps_the_calling_threads_span_as_parent(otel: Otel) -> None:
    from anyio.from_thread import start_blocking_portal  # noqa: PLC0415

    from ailab_async.sync import AILabClient as BlockingClient  # noqa: PLC0415

    tracer = otel.tracer_provider.get_tracer("a script")
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(Simulator(SimulatorConfig())) as sim,
        BlockingClient(api_key=sim.api_key, base_url=sim.url, telemetry=otel.telemetry) as client,
        tracer.start_as_current_span("nightly job") as job,
    ):
        client.credits()
    [call] = otel.finished("ailab query-credits")
    assert call.parent is not None
    assert call.parent.span_id == job.get_span_context().span_id


async def test_the_rate_gauge_observes_a_client_until_it_closes(
    ailab_simulator: Simulator, clock: ManualClock, otel: Otel
) -> None:
    async with client_for(
        ailab_simulator, clock, rate_limit=5.0, telemetry=otel.telemetry
    ) as client:
        await client.credits()
        [rate] = otel.points("ailab.client.rate_limit")
        assert rate.value == pytest.approx(client.stats.current_rate)
    assert otel.points("ailab.client.rate_limit") == []


def test_a_client_does_not_import_opentelemetry_that_the_application_never_imported() -> None:
    code = (
        "import sys; from ailab_async import AILabClient; "
        "client = AILabClient(api_key='k'); "
        "print(client._dispatcher.hooks, any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["None", "False"]
