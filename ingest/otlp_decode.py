"""Reading OTLP/HTTP export requests (``opentelemetry-proto``): protobuf or JSON, gzip or
not, into plain views of spans and log records with their attributes as Python values.

Guarantees: decompression never produces more than the cap it is given; a body that is not a
valid export request (undecodable protobuf, invalid JSON, ids that are not hex) raises
``Malformed`` with a one-line reason; nothing here touches Kafka.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

Signal = Literal["traces", "logs"]
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# OTLP/JSON writes these ids as hex, where protobuf's JSON mapping expects base64.
HEX_IDS = frozenset({"traceId", "spanId", "parentSpanId"})
MAX_VALUE_DEPTH = 32  # nested arrays/maps of an attribute value kept; deeper is cut


class Malformed(ValueError):
    """The body is no valid OTLP export request; the message says why, in one line."""


class TooLarge(ValueError):
    """The body, or what it decompresses to, is over the cap."""


def decompress(body: bytes, encoding: str, cap: int) -> bytes:
    """``body`` as sent (``identity``) or gunzipped, never more than ``cap`` bytes out."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise Malformed(f"Content-Encoding {encoding[:40]!r} is not supported (gzip or none)")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, cap + 1)
    except zlib.error as exc:
        raise Malformed(f"the gzip body does not decompress: {exc}") from None
    if len(out) > cap or inflater.unconsumed_tail:
        raise TooLarge(f"the body decompresses to over the {cap:,}-byte limit")
    if not inflater.eof:
        raise Malformed("the gzip body is truncated")
    return out


def media_type(content_type: str) -> str:
    """``protobuf`` or ``json`` for a Content-Type; Malformed for anything else."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == PROTOBUF:
        return "protobuf"
    if kind == JSON:
        return "json"
    raise Malformed(f"Content-Type {kind[:60]!r} is not OTLP ({PROTOBUF} or {JSON})")


def _hex_ids_to_base64(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in HEX_IDS and isinstance(item, str):
                try:
                    out[key] = base64.b64encode(bytes.fromhex(item)).decode()
                except ValueError:
                    raise Malformed(f"{key} {item[:40]!r} is not hex") from None
            else:
                out[key] = _hex_ids_to_base64(item)
        return out
    if isinstance(value, list):
        return [_hex_ids_to_base64(item) for item in value]
    return value


def parse_request(body: bytes, kind: str, signal: Signal) -> Message:
    """The export request of ``signal`` from a body of media ``kind`` (protobuf or json)."""
    request = ExportTraceServiceRequest() if signal == "traces" else ExportLogsServiceRequest()
    if kind == "protobuf":
        try:
            request.ParseFromString(body)
        except (DecodeError, RecursionError) as exc:
            raise Malformed(f"the body is no OTLP {signal} protobuf: {exc}"[:300]) from None
        return request
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise Malformed(f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(raw, dict):
        raise Malformed(f"the body must be a JSON object, not {type(raw).__name__}")
    try:
        ParseDict(_hex_ids_to_base64(raw), request, ignore_unknown_fields=True)
    except (ParseError, RecursionError, TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Malformed(f"the body is no OTLP {signal} JSON: {reason}"[:300]) from None
    return request


def any_value(value: AnyValue, depth: int = 0) -> Any:
    """An attribute value as Python: str, bool, int, float, list, dict; bytes as base64."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which in ("array_value", "kvlist_value") and depth >= MAX_VALUE_DEPTH:
        return None
    if which == "array_value":
        return [any_value(v, depth + 1) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values, depth + 1)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, which)


def attributes(pairs: Any, depth: int = 0) -> dict[str, Any]:
    """Key-value pairs as a dict (a repeated key: its last value)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        out[pair.key] = any_value(pair.value, depth)
    return out


@dataclass
class SpanView:
    """One span, its resource's attributes beside its own; ``proto`` is the span itself."""

    trace_id: str  # hex
    span_id: str  # hex
    parent_id: str  # hex, '' at a root
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    proto: Any = None


@dataclass
class LogView:
    """One log record with its event name (the field, else the ``event.name`` attribute)."""

    trace_id: str
    span_id: str
    event_name: str
    time_ns: int
    attributes: dict[str, Any]
    body: Any
    resource: dict[str, Any]
    proto: Any = None


def spans_of(request: ExportTraceServiceRequest) -> Iterator[SpanView]:
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield SpanView(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex(),
                    name=span.name,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    attributes=attributes(span.attributes),
                    resource=resource,
                    events=[
                        (e.name, e.time_unix_nano, attributes(e.attributes)) for e in span.events
                    ],
                    proto=span,
                )


def logs_of(request: ExportLogsServiceRequest) -> Iterator[LogView]:
    for resource_logs in request.resource_logs:
        resource = attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attrs = attributes(record.attributes)
                name = record.event_name or attrs.get("event.name") or ""
                yield LogView(
                    trace_id=record.trace_id.hex(),
                    span_id=record.span_id.hex(),
                    event_name=str(name),
                    time_ns=record.time_unix_nano or record.observed_time_unix_nano,
                    attributes=attrs,
                    body=any_value(record.body),
                    resource=resource,
                    proto=record,
                )


def export_response(signal: Signal, kind: str, rejected: int = 0, message: str = "") -> bytes:
    """The export response body (partial success when some items were rejected), in the
    request's media."""
    if signal == "traces":
        response: Message = ExportTraceServiceResponse()
        if rejected:
            response.partial_success.rejected_spans = rejected  # type: ignore[attr-defined]
    else:
        response = ExportLogsServiceResponse()
        if rejected:
            response.partial_success.rejected_log_records = rejected  # type: ignore[attr-defined]
    if rejected:
        response.partial_success.error_message = message  # type: ignore[attr-defined]
    if kind == "json":
        return json.dumps(MessageToDict(response)).encode()
    return response.SerializeToString()
