"""One Avro codec for every event, in one of two wire formats.

* Without a schema registry: Avro *single-object encoding* exactly as the Avro specification
  defines it: ``C3 01``, the writer schema's 8-byte CRC-64-AVRO fingerprint in little-endian
  byte order, then the binary body (Apache Avro's ``BinaryMessageEncoder`` writes the same
  bytes). A reader resolves the writer schema by fingerprint among the versions it ships
  (``schemas/avro`` and ``schemas/avro/history``). An unknown fingerprint is refused
  ("unknown writer schema <hex>"), never guessed: upgrade readers (which carry the new
  contract in their history) before writers. Messages written before the fingerprint fix
  (the fingerprint's bytes reversed) are still read through an explicit compatibility path
  that logs each such schema once; it goes away in the next release.
* With ``registry_url``: Confluent's wire format (``00`` + 4-byte schema id + body) through
  confluent-kafka's Avro serializers, subject ``<topic>-value``, so any Confluent-ecosystem
  consumer can read our topics. Either format is decoded in either mode.

Both directions check the size limits of ``schemas/limits.py``; a decoded event is validated
by its pydantic model (no NaN or infinity, no empty ids). The contracts themselves are loaded
by ``schemas/catalog.py``.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any, TypeVar

import fastavro
import fastavro.schema
from pydantic import ValidationError

from schemas.catalog import SCHEMA_DIR, SchemaCatalog, SchemaError, evolution_problems
from schemas.limits import EventLimits, LimitError, check_fields
from schemas.models import Event
from schemas.secrets import redact_url
from schemas.topics import topic_of

# The catalog's names stay importable from here, where callers have always found them.
__all__ = [
    "CONFLUENT_MAGIC",
    "SCHEMA_DIR",
    "SINGLE_OBJECT_MAGIC",
    "AvroCodec",
    "DecodeError",
    "RegistryUnavailable",
    "SchemaCatalog",
    "SchemaError",
    "evolution_problems",
]

log = logging.getLogger(__name__)

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
E = TypeVar("E", bound=Event)


class DecodeError(Exception):
    """Bytes that are not a valid event of the expected type; the message says why."""


class RegistryUnavailable(Exception):
    """The schema registry could not be asked (down, unreachable, 5xx): nothing is wrong with
    the event, so it is retried, never dead-lettered."""


# Statuses that say nothing about the message: the registry is busy, slow, or does not let us
# in right now (credentials being rotated). Every other 4xx is an answer about the message.
UNAVAILABLE_STATUSES = frozenset({401, 403, 408, 429})


def _registry_failure(exc: Exception) -> bool:
    """Whether ``exc`` from the registry client says the registry could not answer (a
    transport error, a 5xx, UNAVAILABLE_STATUSES), as opposed to answering no about this
    message (an unknown schema id: 404)."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, SchemaRegistryError):
            status = cause.http_status_code
            return not 400 <= status < 500 or status in UNAVAILABLE_STATUSES
        if isinstance(cause, OSError) or _transport_error(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _transport_error(exc: BaseException) -> bool:
    """An httpx (or httpx2, which newer confluent-kafka clients use) TransportError: the
    request did not get an answer. By name, so no private module of the client is imported."""
    return any(
        kind.__name__ == "TransportError" and kind.__module__.split(".")[0].startswith("httpx")
        for kind in type(exc).__mro__
    )


def _short(schema: dict[str, Any]) -> str:
    return str(schema["name"]).rpartition(".")[2]


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


@dataclass(frozen=True)
class _Split:
    """A record schema cut around one of its fields: the fields before it, those after."""

    head: dict[str, Any]
    head_fields: list[str]
    tail: dict[str, Any]
    tail_fields: list[str]


class AvroCodec:
    def __init__(
        self,
        registry_url: str | None = None,
        registry_config: dict[str, Any] | None = None,
        catalog: SchemaCatalog | None = None,
        limits: EventLimits | None = None,
    ):
        self.catalog = catalog or SchemaCatalog.load()
        self.limits = limits or EventLimits()
        self.legacy_reads = 0  # messages read through the reversed-fingerprint path
        self._legacy_logged: set[str] = set()
        self._fingerprints = {name: self.catalog.fingerprint(name) for name in self.catalog.current}
        self._registry = None
        self._registry_url = redact_url(registry_url or "")
        self._serializers: dict[str, Any] = {}
        self._parsed: dict[int, dict[str, Any]] = {}
        self._deserializers: dict[str, Any] = {}
        self._splits: dict[tuple[str, str], _Split] = {}
        if registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            self._registry = SchemaRegistryClient({"url": registry_url, **(registry_config or {})})

    def _fast(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema`` marked as parsed for fastavro, once: the catalog keeps its schemas
        plain (they are also sent to registries and fingerprinted), and fastavro parses a
        plain schema again on every read and write (about a third of their cost)."""
        parsed = self._parsed.get(id(schema))
        if parsed is None:
            parsed = self._parsed[id(schema)] = fastavro.schema.parse_schema(schema)
        return parsed

    @property
    def uses_registry(self) -> bool:
        return self._registry is not None

    def encode(self, event: Event) -> bytes:
        """The event's bytes; LimitError (naming the field) if it is over a size limit."""
        record = event.model_dump()
        name = event.schema_name
        if self._registry is not None:
            data = self._registry_encode(name, record, topic_of(event))
        else:
            body = io.BytesIO()
            body.write(SINGLE_OBJECT_MAGIC + self._fingerprints[name])
            try:
                schema = self._fast(self.catalog.current[name])
                fastavro.schemaless_writer(body, schema, record, strict=True)
            except (ValueError, TypeError) as exc:
                raise DecodeError(f"cannot encode {type(event).__name__}: {exc}") from exc
            data = body.getvalue()
        check_fields(record, len(data), self.limits, type(event).__name__)
        return data

    def current_body(self, data: bytes, event_type: type[Event]) -> bytes | None:
        """The Avro body of ``data`` (a message ``decode`` read as ``event_type``) when it is in
        the single-object format under ``event_type``'s current schema, so that it can be
        copied as is into an event that holds it (``encode_reusing``); None otherwise (a
        registry's format, an older writer schema, or this codec writes through a registry)."""
        fingerprint = self._fingerprints[event_type.schema_name]
        if self._registry is None and data[:2] == SINGLE_OBJECT_MAGIC and data[2:10] == fingerprint:
            return data[10:]
        return None

    def encode_reusing(
        self, event: Event, field: str, held: Event | None, body: bytes | None
    ) -> bytes:
        """``encode(event)``, where ``event.<field>`` is ``held`` and ``body`` is ``held``'s
        Avro body under its current schema (``current_body``): the body is copied instead of
        encoded again. Avro writes a record as its fields one after another, so the result is
        the same datum in the same format: the fields before ``field``, the body, the fields
        after it. Anything else (``event.<field>`` is not ``held``: redacted or replaced; a
        registry; an event large enough that each field's size must be checked) is encoded
        whole, with ``encode``'s checks and errors; so is an event without a ``body``. The
        caller must not have changed ``held`` in place since ``body`` was decoded into it."""
        if body is None or self._registry is not None or getattr(event, field) is not held:
            return self.encode(event)
        split = self._split(event.schema_name, field)
        record = event.model_dump(exclude={field})
        body_out = io.BytesIO()
        body_out.write(SINGLE_OBJECT_MAGIC + self._fingerprints[event.schema_name])
        try:
            head = {name: record[name] for name in split.head_fields}
            fastavro.schemaless_writer(body_out, split.head, head, strict=True)
            body_out.write(body)
            tail = {name: record[name] for name in split.tail_fields}
            fastavro.schemaless_writer(body_out, split.tail, tail, strict=True)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"cannot encode {type(event).__name__}: {exc}") from exc
        data = body_out.getvalue()
        small = len(data) <= min(self.limits.max_field_bytes, self.limits.max_message_bytes)
        return data if small else self.encode(event)

    def _split(self, name: str, field: str) -> _Split:
        """The current schema of ``name`` as two records around its record field ``field``."""
        split = self._splits.get((name, field))
        if split is None:
            schema = self.catalog.current[name]
            fields = schema["fields"]
            at = [f["name"] for f in fields].index(field)
            named: dict[str, Any] = {}  # the named types the whole schema defines
            fastavro.schema.parse_schema(schema, named_schemas=named)

            def part(suffix: str, part_fields: list[dict[str, Any]]) -> dict[str, Any]:
                record = {"type": "record", "name": schema["name"] + suffix, "fields": part_fields}
                return fastavro.schema.parse_schema(record, named_schemas=dict(named))

            head, tail = fields[:at], fields[at + 1 :]
            split = self._splits[(name, field)] = _Split(
                part("Head", head),
                [f["name"] for f in head],
                part("Tail", tail),
                [f["name"] for f in tail],
            )
        return split

    def decode(self, data: bytes, event_type: type[E]) -> E:
        if not data:
            raise DecodeError(f"empty message, expected {event_type.__name__}")
        if data[:1] == CONFLUENT_MAGIC:
            record = self._registry_decode(data, event_type)
        elif data[:2] == SINGLE_OBJECT_MAGIC and len(data) >= 10:
            record = self._local_decode(data, event_type)
        else:
            raise DecodeError(
                f"not an atlas Avro message (starts with {data[:4].hex() or 'nothing'}),"
                f" expected {event_type.__name__}"
            )
        try:
            check_fields(record, len(data), self.limits, event_type.__name__)
        except LimitError as exc:
            raise DecodeError(str(exc)) from None
        try:
            return event_type.model_validate(record)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3]
            )
            raise DecodeError(f"invalid {event_type.__name__}: {problems}") from exc

    def _writer_schema(self, fingerprint: bytes, event_type: type[Event]) -> dict[str, Any]:
        writer = self.catalog.writers.get(fingerprint)
        if writer is not None:
            return writer
        writer = self.catalog.legacy.get(fingerprint)
        if writer is None:
            raise DecodeError(
                f"unknown writer schema {fingerprint.hex()} (CRC-64-AVRO fingerprint) where a"
                f" {event_type.__name__} was expected: not one of this reader's contracts;"
                " upgrade the reader if a newer writer sent it"
            )
        self.legacy_reads += 1
        if writer["name"] not in self._legacy_logged:
            self._legacy_logged.add(writer["name"])
            log.warning(
                "reading %s messages with the byte-reversed fingerprint %s written by atlas-stream"
                " before the Avro-spec fix; re-encode or let them expire: the next release"
                " refuses them",
                _short(writer),
                fingerprint.hex(),
            )
        return writer

    def _local_decode(self, data: bytes, event_type: type[Event]) -> dict[str, Any]:
        reader = self.catalog.current[event_type.schema_name]
        writer = self._writer_schema(data[2:10], event_type)
        if writer["name"] != reader["name"]:
            raise DecodeError(
                f"{_a(_short(writer))} on {topic_of(event_type)}, which carries"
                f" {event_type.__name__} events"
            )
        try:
            return fastavro.schemaless_reader(
                io.BytesIO(data[10:]), self._fast(writer), self._fast(reader)
            )
        except fastavro.read.SchemaResolutionError as exc:
            raise DecodeError(
                f"{_a(_short(writer))} that cannot be read as the current {event_type.__name__}:"
                f" {exc}"
            ) from exc
        except IndexError as exc:  # fastavro indexes enum symbols and union branches
            raise DecodeError(
                f"corrupt {event_type.__name__} body: an enum symbol or union branch index is"
                " out of range"
            ) from exc
        except Exception as exc:  # truncated or corrupt bodies raise anything from EOF up
            raise DecodeError(
                f"corrupt {event_type.__name__} body: {type(exc).__name__}: {exc}"
            ) from exc

    def _registry_encode(self, name: str, record: dict[str, Any], topic: str) -> bytes:
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        serializer = self._serializers.get(name)
        if serializer is None:
            serializer = AvroSerializer(
                self._registry, self.catalog.schema_json(name), lambda obj, _ctx: obj
            )
            self._serializers[name] = serializer
        try:
            return serializer(record, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:
            if _registry_failure(exc):
                raise RegistryUnavailable(
                    f"schema registry {self._registry_url} unavailable while registering"
                    f" {_short(self.catalog.current[name])} under {topic}-value:"
                    f" {type(exc).__name__}: {exc}"
                ) from exc
            raise DecodeError(f"cannot encode {name} through the registry: {exc}") from exc

    def _registry_decode(self, data: bytes, event_type: type[Event]) -> dict[str, Any]:
        if self._registry is None:
            raise DecodeError(
                "message is in Confluent wire format but no schema registry is configured"
                " (set ATLAS_SCHEMA_REGISTRY_URL)"
            )
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        name = event_type.schema_name
        deserializer = self._deserializers.get(name)
        if deserializer is None:
            deserializer = AvroDeserializer(self._registry, self.catalog.schema_json(name))
            self._deserializers[name] = deserializer
        try:
            return deserializer(
                data, SerializationContext(topic_of(event_type), MessageField.VALUE)
            )
        except Exception as exc:
            if _registry_failure(exc):
                raise RegistryUnavailable(
                    f"schema registry {self._registry_url} unavailable while reading a"
                    f" {event_type.__name__}: {type(exc).__name__}: {exc}"
                ) from exc
            raise DecodeError(
                f"cannot decode {event_type.__name__} from registry format: {exc}"
            ) from exc
