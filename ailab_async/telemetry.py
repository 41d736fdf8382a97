"""OpenTelemetry traces and metrics, built in: one subscriber of the client's events.

The client reports what it does as events (:mod:`ailab_async.events`); when OpenTelemetry
is there, one more hook turns them into spans and metrics, so there is one place events come
from. Only ``opentelemetry-api`` is used (``pip install "ailab-async[otel]"``), imported
when a client is created, never by ``import ailab_async``: the SDK works without it.

When it is on: with ``AILabClient(telemetry=True)`` (the default), if ``opentelemetry-api``
is installed and the application has configured a tracer or meter provider before the
client is created; with ``telemetry=Telemetry(tracer_provider=..., meter_provider=...)``,
always, with those providers (``None``: the global one). ``telemetry=False`` turns it off.

What it records (attribute names follow OpenTelemetry's HTTP client conventions):

* a span per call (kind ``CLIENT``, named ``ailab <endpoint>``), a child of the caller's
  current span, with a child span per attempt (named by the HTTP method); a smart-beauty
  task is a span (``ailab task``) from the moment it is tracked to its outcome, and its
  polls are call spans under it;
* the metrics ``http.client.request.duration`` (per attempt), ``ailab.client.calls`` (per
  call, by outcome), ``ailab.client.rate_limited`` (429 answers),
  ``ailab.client.rate_limit`` (the limiter's current rate), ``ailab.client.tasks.pending``
  and ``ailab.client.task.detection_lag``.

No attribute ever holds the API key, a result URL, image bytes or an error's message.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs

from . import events
from .errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

__all__ = ["Telemetry"]

_SCOPE = "ailab_async"
#: Seconds: OpenTelemetry's advised HTTP buckets, and longer ones (an effect can take 30 s).
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: Configuring OpenTelemetry imports one of these: if none is imported, nothing is configured.
_API_MODULES = ("opentelemetry.trace", "opentelemetry.metrics")
_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


@attrs.frozen
class Telemetry:
    """OpenTelemetry for one client, with providers of your choice (``None``: the global
    ones). Pass it as ``AILabClient(telemetry=Telemetry(...))``; tests use it to give each
    client an in-memory exporter::

        from opentelemetry.sdk.trace import TracerProvider
        from ailab_async.telemetry import Telemetry

        client = AILabClient(telemetry=Telemetry(tracer_provider=TracerProvider()))
    """

    #: An ``opentelemetry.trace.TracerProvider`` (``None``: the global one).
    tracer_provider: Any = None
    #: An ``opentelemetry.metrics.MeterProvider`` (``None``: the global one).
    meter_provider: Any = None


def telemetry_hook(
    option: object, *, rate: Callable[[], float | None], server_address: str
) -> _Subscriber | None:
    """The hook that records ``option``'s telemetry, or ``None`` when it is off.

    ``rate`` reads the client's limiter for the rate gauge; ``server_address`` labels it.
    """
    if option is False:
        return None
    if option is True:
        if not any(name in sys.modules for name in _API_MODULES):
            return None  # never imported, so never configured: not even the import is paid
        try:
            from opentelemetry import metrics, trace  # noqa: PLC0415 - optional dependency
        except ImportError:
            return None
        if not _configured(trace.get_tracer_provider(), metrics.get_meter_provider()):
            return None  # nothing would record: no event needs to be built
        option = Telemetry()
    if not isinstance(option, Telemetry):
        raise ConfigurationError("telemetry must be True, False or a Telemetry(...)")
    try:
        from opentelemetry import metrics, trace  # noqa: PLC0415
    except ImportError:
        raise ConfigurationError(
            'telemetry=Telemetry(...) needs opentelemetry-api: pip install "ailab-async[otel]"'
        ) from None
    from . import __version__  # noqa: PLC0415 - the package imports this module

    tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider=option.tracer_provider)
    meter_provider = option.meter_provider or metrics.get_meter_provider()
    subscriber = _Subscriber(tracer, _instruments(meter_provider, __version__))
    subscriber.watch_rate(rate, server_address)
    return subscriber


def _configured(tracer_provider: object, meter_provider: object) -> bool:
    """Whether the application set a tracer or meter provider (not the API's stand-ins)."""
    from opentelemetry import metrics, trace  # noqa: PLC0415

    unset_tracer = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    unset_meter = type(meter_provider).__name__ == "_ProxyMeterProvider" or isinstance(
        meter_provider, metrics.NoOpMeterProvider
    )
    return not isinstance(tracer_provider, unset_tracer) or not unset_meter


# --- metrics: one set of instruments per meter provider -----------------------------------------


class _Instruments:
    """The instruments on one meter. Shared by every client using that provider: a meter
    keeps the first registration of a name, so a second client's gauge callback would be
    lost; the one callback here reads every live client's limiter instead."""

    def __init__(self, meter: Meter) -> None:
        self.duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of HTTP client requests (one per attempt).",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.calls = meter.create_counter(
            "ailab.client.calls",
            unit="{call}",
            description="API calls (retries included in one), by outcome.",
        )
        self.rate_limited = meter.create_counter(
            "ailab.client.rate_limited",
            unit="{response}",
            description="429 EXCEEDING_LIMITS answers.",
        )
        self.pending = meter.create_up_down_counter(
            "ailab.client.tasks.pending",
            unit="{task}",
            description="Smart-beauty tasks being tracked.",
        )
        self.lag = meter.create_histogram(
            "ailab.client.task.detection_lag",
            unit="s",
            description="Upper bound of the time between a task finishing and its detection.",
            explicit_bucket_boundaries_advisory=_LAG_BUCKETS,
        )
        self.rate_sources: weakref.WeakSet[_Subscriber] = weakref.WeakSet()
        meter.create_observable_gauge(
            "ailab.client.rate_limit",
            callbacks=[self._observe_rates],
            unit="{request}/s",
            description="Requests per second the client's rate limiter allows now.",
        )

    def _observe_rates(self, options: CallbackOptions) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation  # noqa: PLC0415

        del options
        for source in list(self.rate_sources):
            observed = source.observe_rate()
            if observed is not None:
                yield Observation(*observed)


_INSTRUMENTS: weakref.WeakKeyDictionary[object, _Instruments] = weakref.WeakKeyDictionary()


def _instruments(meter_provider: Any, version: str) -> _Instruments:
    """The instruments of ``meter_provider``, made on first use."""
    try:
        return _INSTRUMENTS[meter_provider]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable: one set for this client
        return _Instruments(meter_provider.get_meter(_SCOPE, version))
    instruments = _INSTRUMENTS[meter_provider] = _Instruments(
        meter_provider.get_meter(_SCOPE, version)
    )
    return instruments


# --- the subscriber ------------------------------------------------------------------------------


@attrs.define
class _OpenCall:
    """A call whose span is open: its attributes so far, and its open attempt span."""

    span: Span
    attributes: dict[str, AttributeValue]
    attempt: Span | None = None
    retries: int = 0


class _Subscriber:
    """The hook turning events into spans and metrics (one per client)."""

    def __init__(self, tracer: Tracer, instruments: _Instruments) -> None:
        self._tracer = tracer
        self._instruments = instruments
        self._calls: dict[int, _OpenCall] = {}
        self._tasks: dict[str, Span] = {}
        self._rate: Callable[[], float | None] | None = None
        self._rate_attributes: dict[str, AttributeValue] = {}
        self._handlers: dict[type[events.Event], Callable[[Any], None]] = {
            events.CallStarted: self._call_started,
            events.RequestSent: self._request_sent,
            events.ResponseReceived: self._response_received,
            events.RateLimited: self._rate_limited,
            events.RetryScheduled: self._retry_scheduled,
            events.CallEnded: self._call_ended,
            events.TaskTracked: self._task_tracked,
            events.TaskPolled: self._task_polled,
            events.TaskFinished: self._task_finished,
        }

    def __call__(self, event: events.Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    # -- the rate gauge ----------------------------------------------------------------------

    def watch_rate(self, rate: Callable[[], float | None], server_address: str) -> None:
        self._rate = rate
        self._rate_attributes = {"server.address": server_address}
        self._instruments.rate_sources.add(self)

    def close(self) -> None:
        """The client closed: its limiter's rate is no longer observed."""
        self._instruments.rate_sources.discard(self)

    def observe_rate(self) -> tuple[float, dict[str, AttributeValue]] | None:
        rate = None if self._rate is None else self._rate()
        return None if rate is None else (rate, self._rate_attributes)

    # -- calls -------------------------------------------------------------------------------

    def _call_started(self, event: events.CallStarted) -> None:
        from opentelemetry import trace  # noqa: PLC0415 - imported by now: a dict lookup

        attributes: dict[str, AttributeValue] = {
            "ailab.endpoint": event.endpoint,
            "http.request.method": event.method,
            "server.address": event.server_address,
        }
        if event.server_port is not None:
            attributes["server.port"] = event.server_port
        context = None  # the caller's current span is the parent
        if event.task_id is not None:
            attributes["ailab.task_id"] = event.task_id
            task_span = self._tasks.get(event.task_id)
            # A poll runs in the tracker's own task: its parent is the task's span.
            context = trace.set_span_in_context(
                task_span if task_span is not None else trace.INVALID_SPAN
            )
        span = self._tracer.start_span(
            f"ailab {event.endpoint}",
            context=context,
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
        )
        self._calls[event.call_id] = _OpenCall(span, attributes)

    def _request_sent(self, event: events.RequestSent) -> None:
        from opentelemetry import trace  # noqa: PLC0415

        call = self._calls.get(event.call_id)
        if call is None:
            return
        attributes = dict(call.attributes)
        attributes.pop("ailab.task_id", None)
        if event.attempt > 1:
            attributes["http.request.resend_count"] = event.attempt - 1
        call.attempt = self._tracer.start_span(
            str(call.attributes["http.request.method"]),
            context=trace.set_span_in_context(call.span),
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
        )

    def _response_received(self, event: events.ResponseReceived) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            return
        answer = _answer_attributes(event.status, event.code, event.request_id, event.log_id)
        if event.error_type is not None:
            answer["error.type"] = event.error_type
        if event.ambiguous:
            answer["ailab.ambiguous"] = True
        if call.attempt is not None:
            call.attempt.set_attributes(answer)
            _end(call.attempt, event.error_type)
            call.attempt = None
        metric = {
            name: value
            for name, value in call.attributes.items()
            if name in ("ailab.endpoint", "http.request.method", "server.address", "server.port")
        }
        for name in ("http.response.status_code", "error.type"):
            if name in answer:
                metric[name] = answer[name]
        self._instruments.duration.record(event.duration, metric)

    def _rate_limited(self, event: events.RateLimited) -> None:
        self._instruments.rate_limited.add(1, {"ailab.endpoint": event.endpoint})
        call = self._calls.get(event.call_id)
        if call is not None:
            attributes: dict[str, AttributeValue] = {"ailab.attempt": event.attempt}
            if event.retry_after is not None:
                attributes["ailab.retry_after"] = event.retry_after
            call.span.add_event("rate limited", attributes)

    def _retry_scheduled(self, event: events.RetryScheduled) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            return
        call.retries += 1
        call.span.add_event(
            "retry scheduled",
            {
                "ailab.attempt": event.attempt,
                "ailab.retry.reason": event.reason,
                "ailab.retry.delay": event.delay,
                "ailab.ambiguous": event.ambiguous,
            },
        )

    def _call_ended(self, event: events.CallEnded) -> None:
        call = self._calls.pop(event.call_id, None)
        self._instruments.calls.add(
            1, {"ailab.endpoint": event.endpoint, "ailab.outcome": event.error_type or "ok"}
        )
        if call is None:
            return
        if call.attempt is not None:  # cut off (cancelled, or the deadline): no answer
            if event.error_type is not None:
                call.attempt.set_attribute("error.type", event.error_type)
            _end(call.attempt, event.error_type)
        answer = _answer_attributes(event.status, event.code, event.request_id, event.log_id)
        answer["ailab.retry_count"] = call.retries
        if event.error_type is not None:
            answer["error.type"] = event.error_type
        call.span.set_attributes(answer)
        _end(call.span, event.error_type)

    # -- tasks -------------------------------------------------------------------------------

    def _task_tracked(self, event: events.TaskTracked) -> None:
        previous = self._tasks.pop(event.task_id, None)
        if previous is not None:  # pragma: no cover - the tracker finishes a task first
            previous.end()
        self._tasks[event.task_id] = self._tracer.start_span(
            "ailab task", attributes={"ailab.task_id": event.task_id, "ailab.fresh": event.fresh}
        )
        self._instruments.pending.add(1)

    def _task_polled(self, event: events.TaskPolled) -> None:
        span = self._tasks.get(event.task_id)
        if span is not None:
            attributes: dict[str, AttributeValue] = {
                "ailab.poll": event.poll,
                "ailab.task.state": event.state,
            }
            if event.error_type is not None:
                attributes["error.type"] = event.error_type
            span.add_event("poll", attributes)

    def _task_finished(self, event: events.TaskFinished) -> None:
        self._instruments.pending.add(-1)
        if event.detection_lag is not None:
            self._instruments.lag.record(event.detection_lag)
        span = self._tasks.pop(event.task_id, None)
        if span is None:
            return
        attributes: dict[str, AttributeValue] = {
            "ailab.task.outcome": event.outcome,
            "ailab.task.polls": event.polls,
        }
        if event.detection_lag is not None:
            attributes["ailab.task.detection_lag"] = event.detection_lag
        if event.error_type is not None:
            attributes["error.type"] = event.error_type
        span.set_attributes(attributes)
        _end(span, None if event.outcome == "succeeded" else event.error_type or event.outcome)


def _answer_attributes(
    status: int | None, code: str, request_id: str | None, log_id: str | None
) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {}
    if status is not None:
        attributes["http.response.status_code"] = status
    if code:
        attributes["ailab.error_code"] = code
    if request_id:
        attributes["ailab.request_id"] = request_id
    if log_id:
        attributes["ailab.log_id"] = log_id
    return attributes


def _end(span: Span, error_type: str | None) -> None:
    """End ``span``, marked as an error (without a message) if ``error_type`` is set."""
    if error_type is not None:
        from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

        span.set_status(Status(StatusCode.ERROR))
    span.end()
