"""JSON log lines: a UTC timestamp to the millisecond, the request id, and the trace and span ids while
a span is current (tracing on), none while tracing is off."""

from __future__ import annotations

import datetime
import io
import json
import logging
import re

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.common.logs import configure_logging, request_id_var, utc_timestamp


@pytest.fixture
def json_lines():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("json")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)

    def read() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield read
    root.handlers[:] = handlers
    root.setLevel(level)


def test_timestamps_are_utc_to_the_millisecond():
    moment = datetime.datetime(2026, 12, 2, 20, 51, 4, 123456, tzinfo=datetime.UTC)
    assert utc_timestamp(moment.timestamp()) == "2026-12-02T20:51:04.123Z"


def test_a_json_line_has_the_time_request_id_and_no_trace_while_tracing_is_off(json_lines):
    token = request_id_var.set("req-1")
    try:
        logging.getLogger("maas.test").info("hello %s", "world", extra={"port": 50051})
    finally:
        request_id_var.reset(token)
    (entry,) = json_lines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    logged = datetime.datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    assert abs((datetime.datetime.now(datetime.UTC) - logged).total_seconds()) < 5
    assert (entry["msg"], entry["request_id"], entry["port"], entry["level"]) == ("hello world", "req-1", 50051, "INFO")
    assert "trace_id" not in entry and "span_id" not in entry


def test_a_json_line_logged_inside_a_span_names_its_trace_and_span(json_lines):
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("call") as span:
        logging.getLogger("maas.test").warning("inside")
    (entry,) = json_lines()
    context = span.get_span_context()
    assert entry["trace_id"] == f"{context.trace_id:032x}" and entry["span_id"] == f"{context.span_id:016x}"
