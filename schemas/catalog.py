"""The event contracts (``schemas/avro/*.avsc``), loaded and checked once, for the codec.

`SchemaCatalog.load` reads every event's contract and every earlier version under
``history/``, inlines the named types that contracts share (so each event's schema stands
alone, as a registry and a fingerprint need), and parses them; a missing, malformed or
invalid file is a `SchemaError` naming the file, never a half-loaded catalog. Writer schemas
are keyed by the Avro specification's single-object fingerprint (CRC-64-AVRO, little-endian),
and also by its byte-reversed form, which atlas-stream wrote before the fingerprint fix.
`evolution_problems` is the rule a new contract version must follow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema

from schemas.alerts import Alert
from schemas.models import (
    CheckpointEvent,
    DeadLetter,
    Event,
    FeedbackEvent,
    InteractionEvent,
    JobStatus,
    MemoryEntry,
    PromptVersion,
    RetrainTrigger,
    ScoredTrace,
)
from schemas.rollouts import RolloutStatus

# Every contract, by its model: the catalog loads one schema file per entry.
EVENT_TYPES: tuple[type[Event], ...] = (
    InteractionEvent,
    FeedbackEvent,
    ScoredTrace,
    PromptVersion,
    CheckpointEvent,
    RetrainTrigger,
    JobStatus,
    DeadLetter,
    MemoryEntry,
    RolloutStatus,
    Alert,
)

SCHEMA_DIR = Path(__file__).parent / "avro"


class SchemaError(Exception):
    """A contract file cannot be loaded."""


def _fingerprint(parsed: dict[str, Any]) -> bytes:
    """The spec's single-object fingerprint: CRC-64-AVRO of the parsing canonical form, as 8
    little-endian bytes. fastavro's hex already lists those bytes in that order."""
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


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


def _contracts(directory: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every event's raw contract by full name, and every named type they define."""
    raws = {t.schema_name: _read(directory / f"{t.schema_name}.avsc") for t in EVENT_TYPES}
    # named types shared by several contracts have files of their own (JobKind)
    shared = [
        _read(p, ("record", "enum", "fixed"))
        for p in sorted(directory.glob("*.avsc"))
        if p.stem not in raws
    ]
    named: dict[str, Any] = {}
    _collect_named([*raws.values(), *shared], None, named)
    return raws, named


def standalone(schema_name: str, directory: Path = SCHEMA_DIR) -> dict[str, Any]:
    """The event's contract as JSON with every type it names from another contract inlined
    (a ScoredTrace with its InteractionEvent): what a history file of it must hold, and what
    :func:`evolution_problems` compares one against."""
    raws, named = _contracts(directory)
    return _inline(raws[schema_name], named, set(), None)


@dataclass
class SchemaCatalog:
    """The contracts, parsed: the current schema per event and every known writer version."""

    current: dict[str, dict[str, Any]] = field(default_factory=dict)
    writers: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    # The same schemas under the byte-reversed fingerprints written before the fix.
    legacy: dict[bytes, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path = SCHEMA_DIR) -> SchemaCatalog:
        raws, named = _contracts(directory)
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


def evolution_problems(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why ``new`` is not a safe evolution of ``old`` under our rule (empty when it is):
    the old fields stay, unchanged and in order, and every added field comes after them
    with a default, so old readers can read new messages and new readers old ones."""
    problems = []
    old_fields, new_fields = old["fields"], new["fields"]
    for position, field_def in enumerate(old_fields):
        if position >= len(new_fields) or new_fields[position]["name"] != field_def["name"]:
            problems.append(f"field {field_def['name']!r} moved or removed")
            continue
        old_type, new_type = field_def["type"], new_fields[position]["type"]
        old_record, new_record = _record_items(old_type), _record_items(new_type)
        if _same_record(old_record, new_record) and _is_array(old_type) == _is_array(new_type):
            # a record nested inline (a ScoredTrace's interaction, an InteractionEvent's
            # rollouts' items) evolves by the same rule
            inner = evolution_problems(old_record, new_record)
            problems += [f"in field {field_def['name']!r}: {p}" for p in inner]
        elif new_type != old_type and not _appended_symbols(old_type, new_type):
            problems.append(f"field {field_def['name']!r} changed type")
    for field_def in new_fields[len(old_fields) :]:
        if "default" not in field_def:
            problems.append(f"added field {field_def['name']!r} has no default")
    return problems


def _appended_symbols(old: Any, new: Any) -> bool:
    """Both are the same enum and ``new`` only appends symbols (JobKind gained ``rim``): new
    readers read every old message; an old reader meets a new writer's fingerprint, which it
    refuses by name like any newer contract (upgrade readers first)."""
    return (
        isinstance(old, dict)
        and isinstance(new, dict)
        and old.get("type") == new.get("type") == "enum"
        and old.get("name") == new.get("name")
        and new.get("symbols", [])[: len(old.get("symbols", []))] == old.get("symbols")
        and {k: v for k, v in old.items() if k not in ("symbols", "doc")}
        == {k: v for k, v in new.items() if k not in ("symbols", "doc")}
    )


def _is_array(field_type: Any) -> bool:
    return isinstance(field_type, dict) and field_type.get("type") == "array"


def _record_items(field_type: Any) -> Any:
    """The record an array field holds (its items, when they are a record), else the type."""
    if _is_array(field_type) and isinstance(field_type.get("items"), dict):
        return field_type["items"]
    return field_type


def _same_record(old: Any, new: Any) -> bool:
    """Both are inline definitions of the record of the same name (possibly different)."""
    return (
        isinstance(old, dict)
        and isinstance(new, dict)
        and old.get("type") == new.get("type") == "record"
        and old.get("name") == new.get("name")
    )
