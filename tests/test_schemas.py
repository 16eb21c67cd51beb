"""The Avro contracts, their Python mirrors and the codec's errors."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import fastavro
import pytest
from pydantic import BaseModel, ValidationError

from schemas.catalog import EVENT_TYPES
from schemas.codec import (
    SCHEMA_DIR,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    DecodeError,
    SchemaCatalog,
    SchemaError,
)
from schemas.limits import EventLimits, LimitError
from schemas.models import FeedbackEvent, InteractionEvent, ScoredTrace
from tests.factories import interaction, one_of_each, scored


def _avro_record_fields(schema: Any) -> dict[str, Any] | None:
    """The record schema inside a field type (through unions and arrays), if any."""
    if isinstance(schema, list):
        for branch in schema:
            found = _avro_record_fields(branch)
            if found:
                return found
    if isinstance(schema, dict):
        if schema.get("type") == "record":
            return schema
        if schema.get("type") == "array":
            return _avro_record_fields(schema["items"])
    return None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _assert_mirrors(model: type[BaseModel], record: dict[str, Any], path: str) -> None:
    avro_names = [f["name"] for f in record["fields"]]
    assert list(model.model_fields) == avro_names, f"{path}: fields differ from the .avsc"
    for avro_field in record["fields"]:
        field = model.model_fields[avro_field["name"]]
        nested_avro = _avro_record_fields(avro_field["type"])
        nested_model = _model_of(field.annotation)
        if nested_avro is not None:
            assert nested_model is not None, f"{path}.{avro_field['name']} should be a model"
            _assert_mirrors(nested_model, nested_avro, f"{path}.{avro_field['name']}")
        optional = isinstance(avro_field["type"], list) and "null" in avro_field["type"]
        if optional:
            assert not field.is_required(), f"{path}.{avro_field['name']} is optional in Avro"


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_models_mirror_the_avro_contracts(event_type: type) -> None:
    catalog = SchemaCatalog.load()
    _assert_mirrors(event_type, catalog.current[event_type.schema_name], event_type.__name__)


def test_every_event_type_round_trips_through_the_codec() -> None:
    codec = AvroCodec()
    events = one_of_each(random.Random(1))
    assert {type(e) for e in events} == set(EVENT_TYPES)
    for event in events:
        data = codec.encode(event)
        assert data.startswith(SINGLE_OBJECT_MAGIC)
        assert codec.decode(data, type(event)) == event


def test_decoding_the_wrong_type_names_the_event_and_the_topic() -> None:
    codec = AvroCodec()
    data = codec.encode(interaction(random.Random(2)))
    with pytest.raises(
        DecodeError,
        match=r"^an InteractionEvent on atlas\.feedback\.v1, which carries FeedbackEvent events$",
    ):
        codec.decode(data, FeedbackEvent)


@pytest.mark.parametrize(
    ("event_type", "spec_bytes"),
    [
        # SchemaNormalization.parsingFingerprint64 of Apache Avro's Java library, little-endian.
        (InteractionEvent, "95f37904f68a39fc"),
        (FeedbackEvent, "5b6a616fdb5656fc"),
        (ScoredTrace, "cfd09f68e07e18dc"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_messages_carry_the_avro_spec_fingerprint(event_type: type, spec_bytes: str) -> None:
    catalog = SchemaCatalog.load()
    assert catalog.fingerprint(event_type.schema_name).hex() == spec_bytes
    event = one_of_each(random.Random(5))[
        [InteractionEvent, FeedbackEvent, ScoredTrace].index(event_type)
    ]
    assert AvroCodec().encode(event)[2:10].hex() == spec_bytes


def test_the_earlier_interaction_and_scored_trace_schemas_are_still_readable() -> None:
    # Java's fingerprints of the contracts before InteractionEvent gained memory_entries (v1)
    # and memory_held_back (v2): the history files must reproduce them exactly, or old
    # messages would be refused.
    writers = SchemaCatalog.load().writers
    for v1 in ("0f42a604154517c5", "59c7732cab8f998a"):
        assert bytes.fromhex(v1) in writers
    for v2 in ("df1d63c8b58aaa6f", "b855f7af9f7a1423"):
        assert bytes.fromhex(v2) in writers
    assert bytes.fromhex("85dcd1b52373271c") in writers  # ScoredTrace before rim_version


def test_an_unknown_fingerprint_is_refused_never_guessed() -> None:
    codec = AvroCodec()
    data = codec.encode(FeedbackEvent(trace_id="t", kind="approve"))
    forged = data[:2] + bytes(8) + data[10:]
    with pytest.raises(DecodeError, match=r"^unknown writer schema 0000000000000000"):
        codec.decode(forged, FeedbackEvent)


def test_messages_with_the_old_reversed_fingerprint_are_read_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    codec = AvroCodec()
    event = FeedbackEvent(trace_id="t", kind="approve")
    data = codec.encode(event)
    legacy = data[:2] + data[2:10][::-1] + data[10:]
    with caplog.at_level("WARNING"):
        assert codec.decode(legacy, FeedbackEvent) == event
        assert codec.decode(legacy, FeedbackEvent) == event
    assert codec.legacy_reads == 2
    warnings = [r for r in caplog.records if "byte-reversed fingerprint" in r.getMessage()]
    assert len(warnings) == 1 and "FeedbackEvent" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty message"),
        (b"random bytes here", "not an atlas Avro message"),
        (b"\x00\x00\x00\x00\x01abc", "no schema registry is configured"),
    ],
)
def test_undecodable_bytes_give_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        AvroCodec().decode(payload, InteractionEvent)


def test_truncated_body_is_a_decode_error() -> None:
    codec = AvroCodec()
    data = codec.encode(interaction(random.Random(3)))
    with pytest.raises(DecodeError, match="corrupt InteractionEvent body"):
        codec.decode(data[: len(data) // 2], InteractionEvent)


def test_event_missing_a_required_field_is_rejected_when_built() -> None:
    with pytest.raises(ValidationError, match="trace_id"):
        FeedbackEvent(kind="approve")  # type: ignore[call-arg]


def test_message_missing_a_required_field_is_a_decode_error(schema_dir_copy: Path) -> None:
    """A producer whose schema lacks a required field (no default) cannot be read."""
    codec = AvroCodec()
    contract = json.loads((schema_dir_copy / "io.atlas_stream.FeedbackEvent.avsc").read_text())
    contract["fields"] = [f for f in contract["fields"] if f["name"] != "trace_id"]
    writer = fastavro.parse_schema(contract)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, writer, {"event_id": "e", "created_at": 0, "kind": "approve"})
    fingerprint = bytes.fromhex(
        fastavro.schema.fingerprint(
            fastavro.schema.to_parsing_canonical_form(writer), "CRC-64-AVRO"
        )
    )
    data = SINGLE_OBJECT_MAGIC + fingerprint + body.getvalue()
    with pytest.raises(DecodeError, match="unknown writer schema"):
        codec.decode(data, FeedbackEvent)


def test_broken_avsc_is_a_one_line_schema_error(schema_dir_copy: Path) -> None:
    path = schema_dir_copy / "io.atlas_stream.ScoredTrace.avsc"
    path.write_text(path.read_text().replace('"type": "double"', '"type": "dubble"', 1))
    with pytest.raises(SchemaError) as info:
        SchemaCatalog.load(schema_dir_copy)
    message = str(info.value)
    assert "ScoredTrace.avsc" in message and "dubble" in message and "\n" not in message


def test_avsc_that_is_not_json_is_a_schema_error(schema_dir_copy: Path) -> None:
    (schema_dir_copy / "io.atlas_stream.JobStatus.avsc").write_text("{ not json")
    with pytest.raises(SchemaError, match=r"JobStatus\.avsc: not valid JSON"):
        SchemaCatalog.load(schema_dir_copy)


def test_scored_trace_embeds_the_whole_interaction() -> None:
    codec = AvroCodec()
    rng = random.Random(4)
    event = interaction(rng)
    from tests.factories import scored

    trace = scored(event, rng)
    decoded = codec.decode(codec.encode(trace), ScoredTrace)
    assert decoded.interaction.steps == event.steps
    assert decoded.judge_scores[1].samples == 3


def test_an_oversized_event_is_refused_naming_the_field() -> None:
    limits = EventLimits(max_field_bytes=4096, max_message_bytes=100_000)
    codec = AvroCodec(limits=limits)
    event = interaction(random.Random(6))
    event.steps[1].content = "é" * 3000  # 6,000 UTF-8 bytes
    with pytest.raises(LimitError, match=r"^InteractionEvent field steps\[1\]\.content is 6,000"):
        codec.encode(event)
    event.steps[1].content = "ok"
    event.metadata = {f"k{i}": "v" * 4000 for i in range(30)}
    with pytest.raises(LimitError, match=r"over the 100,000-byte message limit .*metadata\.k"):
        codec.encode(event)
    with pytest.raises(DecodeError, match="field task_input is 5,000 bytes"):
        big = AvroCodec().encode(
            interaction(random.Random(7)).model_copy(update={"task_input": "x" * 5000})
        )
        codec.decode(big, InteractionEvent)


@pytest.mark.parametrize(
    "path", sorted(SCHEMA_DIR.glob("*.avsc")), ids=lambda p: p.name.removeprefix("io.atlas_stream.")
)
def test_every_contract_loads_alone_as_a_third_party_would(path: Path) -> None:
    """fastavro's ``load_schema`` finds a named type another file defines only in a file named
    after it: every type a contract refers to must have one."""
    loaded = fastavro.schema.load_schema(str(path))
    assert loaded["name"] == path.stem


def test_contracts_that_share_a_type_agree_on_it() -> None:
    catalog = SchemaCatalog.load()
    trigger = catalog.current["io.atlas_stream.RetrainTrigger"]
    status = catalog.current["io.atlas_stream.JobStatus"]
    [kind_in_trigger] = [f["type"] for f in trigger["fields"] if f["name"] == "kind"]
    [kind_in_status] = [f["type"] for f in status["fields"] if f["name"] == "kind"]
    assert kind_in_trigger["symbols"] == kind_in_status["symbols"] == ["gepa", "grpo", "rim"]


def _decoded_interactions(codec: AvroCodec, n: int) -> list[tuple[InteractionEvent, bytes]]:
    rng = random.Random(11)
    return [(codec.decode(d, InteractionEvent), d) for d in map(codec.encode, _some(rng, n))]


def _some(rng: random.Random, n: int) -> list[InteractionEvent]:
    events = [interaction(rng) for _ in range(n)]
    # the optional fields both ways: absent, and present (empty and not)
    events[0] = events[0].model_copy(update={"task_family": None, "reference": None})
    events[1] = events[1].model_copy(update={"baseline_answer": "", "metadata": {}})
    return events


def test_a_scored_trace_reusing_its_interactions_bytes_is_the_same_message() -> None:
    """The reward worker copies the interaction's body into the ScoredTrace instead of
    encoding it again (``encode_reusing``): the bytes must be those ``encode`` writes."""
    codec, rng = AvroCodec(), random.Random(12)
    for event, data in _decoded_interactions(codec, 50):
        trace = scored(event, rng)
        body = codec.current_body(data, InteractionEvent)
        assert body == data[10:]
        reused = codec.encode_reusing(trace, "interaction", event, body)
        assert reused == codec.encode(trace)
        assert codec.decode(reused, ScoredTrace) == trace


def test_reusing_bytes_falls_back_to_encoding_whenever_they_may_not_match() -> None:
    codec, rng = AvroCodec(), random.Random(13)
    (event, data), (other, _) = _decoded_interactions(codec, 2)
    body = codec.current_body(data, InteractionEvent)
    # the trace holds another interaction (a redacted copy, a replay without its marker)
    changed = scored(event.model_copy(update={"final_answer": "[EMAIL]"}), rng)
    assert codec.encode_reusing(changed, "interaction", event, body) == codec.encode(changed)
    assert b"[EMAIL]" in codec.encode_reusing(changed, "interaction", event, body)
    # no body (the message was in a registry's format)
    plain = scored(other, rng)
    assert codec.encode_reusing(plain, "interaction", other, None) == codec.encode(plain)
    # a body an older writer schema wrote is never copied into a current message
    writers = SchemaCatalog.load().writers
    current = codec.encode(event)[2:10]
    older = next(
        (fp, s)
        for fp, s in writers.items()
        if s["name"].endswith("InteractionEvent") and fp != current
    )
    old_data = SINGLE_OBJECT_MAGIC + older[0]
    body_out = io.BytesIO()
    fastavro.schemaless_writer(body_out, fastavro.parse_schema(older[1]), event.model_dump())
    assert codec.current_body(old_data + body_out.getvalue(), InteractionEvent) is None
    # over the field cap: each field is checked, with encode's error
    limits = EventLimits(max_field_bytes=1024, max_message_bytes=100_000)
    small = AvroCodec(limits=limits)
    big = scored(event, rng).model_copy(update={"rationale": "x" * 2000})
    with pytest.raises(LimitError, match="rationale"):
        small.encode_reusing(big, "interaction", event, body)
    # and over the message cap, however the two caps are set
    tight = AvroCodec(limits=EventLimits(max_field_bytes=100_000, max_message_bytes=4096))
    with pytest.raises(LimitError, match="message limit"):
        tight.encode_reusing(
            big.model_copy(update={"rationale": "y" * 5000}), "interaction", event, body
        )
