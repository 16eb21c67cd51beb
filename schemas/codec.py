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
by its pydantic model (no NaN or infinity, no empty ids).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import fastavro
import fastavro.schema
from pydantic import ValidationError

from schemas.limits import EventLimits, LimitError, check_fields
from schemas.models import EVENT_TYPES, Event
from schemas.secrets import redact_url
from schemas.topics import topic_of

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).parent / "avro"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
E = TypeVar("E", bound=Event)


class SchemaError(Exception):
    """A contract file cannot be loaded."""


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


def _fingerprint(parsed: dict[str, Any]) -> bytes:
    """The spec's single-object fingerprint: CRC-64-AVRO of the parsing canonical form, as 8
    little-endian bytes. fastavro's hex already lists those bytes in that order."""
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


def _short(schema: dict[str, Any]) -> str:
    return str(schema["name"]).rpartition(".")[2]


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


NAMED_KINDS = ("record", "enum", "fixed")


def _fullname(node: dict[str, Any], namespace: str | None) -> str:
    name = node["name"]
    ns = node.get("namespace", namespace)
    return name if "." in name or not ns else f"{ns}.{name}"


def _collect_named(node: Any, namespace: str | None, found: dict[str, Any]) -> None:
    if isinstance(node, list):
        for item in node:
            _collect_named(item, namespace, found)
    elif isinstance(node, dict):
        if node.get("type") in NAMED_KINDS and "name" in node:
            fullname = _fullname(node, namespace)
            found[fullname] = node
            namespace = fullname.rpartition(".")[0] or None
        for key in ("type", "fields", "items", "values"):
            if key in node:
                _collect_named(node[key], namespace, found)


def _inline(node: Any, named: dict[str, Any], defined: set[str], namespace: str | None) -> Any:
    """Replace references to types defined in other contract files by their definitions,
    so every event's schema stands alone (as a registry and a fingerprint need it)."""
    if isinstance(node, str):
        fullname = node if "." in node or not namespace else f"{namespace}.{node}"
        if fullname in named and fullname not in defined:
            return _inline(named[fullname], named, defined, namespace)
        return node
    if isinstance(node, list):
        return [_inline(item, named, defined, namespace) for item in node]
    if isinstance(node, dict):
        out = dict(node)
        if node.get("type") in NAMED_KINDS and "name" in node:
            fullname = _fullname(node, namespace)
            defined.add(fullname)
            namespace = fullname.rpartition(".")[0] or None
        for key in ("type", "fields", "items", "values"):
            if key in node:
                out[key] = _inline(node[key], named, defined, namespace)
        return out
    return node


def _read(path: Path, kinds: tuple[str, ...] = ("record",)) -> dict[str, Any]:
    if not path.exists():
        raise SchemaError(f"{path}: contract file missing")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path.name}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") not in kinds or "name" not in raw:
        what = (
            "an event contract must be an Avro record"
            if kinds == ("record",)
            else ("a shared type must be a named Avro record, enum or fixed")
        )
        raise SchemaError(f"{path.name}: {what} with a name")
    return raw


def _parse(path: Path, raw: dict[str, Any], named: dict[str, Any]) -> dict[str, Any]:
    try:
        return fastavro.schema.parse_schema(
            _inline(raw, named, set(), None), _write_hint=False, _force=True
        )
    except (fastavro.schema.SchemaParseException, KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"{path.name}: invalid Avro schema: {exc}") from exc
    except fastavro.schema.UnknownType as exc:
        raise SchemaError(f"{path.name}: refers to unknown type {exc.name}") from exc


@dataclass
class SchemaCatalog:
    """The contracts, parsed: the current schema per event and every known writer version."""

    current: dict[str, dict[str, Any]] = field(default_factory=dict)
    writers: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    # The same schemas under the byte-reversed fingerprints written before the fix.
    legacy: dict[bytes, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path = SCHEMA_DIR) -> SchemaCatalog:
        raws = {t.schema_name: _read(directory / f"{t.schema_name}.avsc") for t in EVENT_TYPES}
        # named types shared by several contracts have files of their own (JobKind)
        shared = [
            _read(p, ("record", "enum", "fixed"))
            for p in sorted(directory.glob("*.avsc"))
            if p.stem not in raws
        ]
        named: dict[str, Any] = {}
        _collect_named([*raws.values(), *shared], None, named)
        catalog = cls()
        for name, raw in raws.items():
            parsed = _parse(directory / f"{name}.avsc", raw, named)
            catalog.current[name] = parsed
            catalog.writers[_fingerprint(parsed)] = parsed
        for path in sorted((directory / "history").glob("*.avsc")):
            parsed = _parse(path, _read(path), named)
            catalog.writers.setdefault(_fingerprint(parsed), parsed)
        catalog.legacy = {fp[::-1]: schema for fp, schema in catalog.writers.items()}
        return catalog

    def fingerprint(self, schema_name: str) -> bytes:
        return _fingerprint(self.current[schema_name])

    def schema_json(self, schema_name: str) -> str:
        return json.dumps(self.current[schema_name])


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


def evolution_problems(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why ``new`` is not a safe evolution of ``old`` under our rule (empty when it is):
    the old fields stay, unchanged and in order, and every added field comes after them
    with a default, so old readers can read new messages and new readers old ones."""
    problems = []
    old_fields, new_fields = old["fields"], new["fields"]
    for position, field_def in enumerate(old_fields):
        if position >= len(new_fields) or new_fields[position]["name"] != field_def["name"]:
            problems.append(f"field {field_def['name']!r} moved or removed")
        elif new_fields[position]["type"] != field_def["type"]:
            problems.append(f"field {field_def['name']!r} changed type")
    for field_def in new_fields[len(old_fields) :]:
        if "default" not in field_def:
            problems.append(f"added field {field_def['name']!r} has no default")
    return problems
