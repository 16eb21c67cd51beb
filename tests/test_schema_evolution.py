"""Contracts evolve by appending optional fields: new readers read old messages, and an old
reader refuses a newer writer's message by name instead of guessing (upgrade readers first)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from schemas.catalog import standalone
from schemas.codec import SCHEMA_DIR, AvroCodec, DecodeError, SchemaCatalog, evolution_problems
from schemas.models import FeedbackEvent, InteractionEvent, JobStatus, RetrainTrigger, ScoredTrace

FEEDBACK_FILE = "io.atlas_stream.FeedbackEvent.avsc"


class FeedbackEventV2(FeedbackEvent):
    """What FeedbackEvent would look like after adding one optional field."""

    channel: str | None = None


def _evolve(schema_dir: Path) -> None:
    """Turn a copy of the contracts into 'v2': FeedbackEvent gains `channel`, and the v1
    schema is kept in history so v2 readers still resolve v1 messages."""
    path = schema_dir / FEEDBACK_FILE
    v1 = json.loads(path.read_text())
    (schema_dir / "history").mkdir(exist_ok=True)
    (schema_dir / "history" / "io.atlas_stream.FeedbackEvent.v1.avsc").write_text(json.dumps(v1))
    v2 = dict(
        v1, fields=[*v1["fields"], {"name": "channel", "type": ["null", "string"], "default": None}]
    )
    path.write_text(json.dumps(v2))


def test_old_reader_refuses_a_new_writers_message_by_its_fingerprint(
    schema_dir_copy: Path,
) -> None:
    _evolve(schema_dir_copy)
    new_writer = AvroCodec(catalog=SchemaCatalog.load(schema_dir_copy))
    old_reader = AvroCodec()
    sent = FeedbackEventV2(trace_id="t-1", kind="rating", rating=4.0, comment="ok", channel="slack")
    data = new_writer.encode(sent)
    with pytest.raises(DecodeError, match=f"^unknown writer schema {data[2:10].hex()} "):
        old_reader.decode(data, FeedbackEvent)


def test_new_reader_reads_an_old_writers_message(schema_dir_copy: Path) -> None:
    _evolve(schema_dir_copy)
    old_writer = AvroCodec()
    new_reader = AvroCodec(catalog=SchemaCatalog.load(schema_dir_copy))
    sent = FeedbackEvent(trace_id="t-2", kind="edit", edited_text="Paris", user_id="u7")
    received = new_reader.decode(old_writer.encode(sent), FeedbackEventV2)
    assert received.channel is None
    assert received.model_dump(exclude={"channel"}) == sent.model_dump()


def test_the_evolution_rule_catches_unsafe_changes() -> None:
    v1 = json.loads((SCHEMA_DIR / FEEDBACK_FILE).read_text())
    fields = v1["fields"]
    appended = dict(
        v1, fields=[*fields, {"name": "x", "type": ["null", "string"], "default": None}]
    )
    no_default = dict(v1, fields=[*fields, {"name": "x", "type": "string"}])
    removed = dict(v1, fields=fields[1:])
    retyped = dict(v1, fields=[{**fields[0], "type": "int"}, *fields[1:]])
    assert evolution_problems(v1, appended) == []
    assert evolution_problems(v1, no_default) == ["added field 'x' has no default"]
    assert "moved or removed" in evolution_problems(v1, removed)[0]
    assert evolution_problems(v1, retyped) == ["field 'event_id' changed type"]


@pytest.mark.parametrize(
    "old_path", sorted((SCHEMA_DIR / "history").glob("*.avsc")), ids=lambda p: p.name
)
def test_every_shipped_history_schema_evolves_safely(old_path: Path) -> None:
    old = json.loads(old_path.read_text())
    current = standalone(f"{old['namespace']}.{old['name']}")
    assert evolution_problems(old, current) == []


# The InteractionEvent fields each earlier contract lacks (ScoredTrace embeds it).
LACKING = {
    1: {"memory_entries", "memory_held_back", "rollouts", "production_answer"},
    2: {"memory_held_back", "rollouts", "production_answer"},
    3: {"production_answer"},
}
LATER_SCORED_FIELDS = ("rim_version", "production_reward")  # ScoredTrace fields added after


def _old_codec(schema_dir: Path, version: int) -> AvroCodec:
    """A writer as agents and the reward stream were with InteractionEvent ``version`` (and a
    ScoredTrace before ``rim_version`` and ``production_reward``, which came later)."""
    history = schema_dir / "history" / f"io.atlas_stream.InteractionEvent.v{version}.avsc"
    (schema_dir / "io.atlas_stream.InteractionEvent.avsc").write_text(history.read_text())
    scored = schema_dir / "io.atlas_stream.ScoredTrace.avsc"
    contract = json.loads(scored.read_text())
    contract["fields"] = [f for f in contract["fields"] if f["name"] not in LATER_SCORED_FIELDS]
    scored.write_text(json.dumps(contract))
    return AvroCodec(catalog=SchemaCatalog.load(schema_dir))


def _old_models(lacking: set[str]) -> tuple[type[InteractionEvent], type[ScoredTrace]]:
    class OldInteraction(InteractionEvent):
        def model_dump(self, **kwargs: Any) -> dict[str, Any]:
            return super().model_dump(**{**kwargs, "exclude": lacking})

    class OldScoredTrace(ScoredTrace):
        def model_dump(self, **kwargs: Any) -> dict[str, Any]:
            excluded = {"interaction": lacking} | dict.fromkeys(LATER_SCORED_FIELDS, True)
            return super().model_dump(**{**kwargs, "exclude": excluded})

    return OldInteraction, OldScoredTrace


def _empty(name: str) -> object:
    """What a field reads as when the writer lacked it: its default."""
    return InteractionEvent.model_fields[name].get_default(call_default_factory=True)


@pytest.mark.parametrize("version", sorted(LACKING))
def test_old_interactions_and_scored_traces_decode_with_the_new_fields_empty(
    schema_dir_copy: Path, version: int
) -> None:
    lacking = LACKING[version]
    old_writer, reader = _old_codec(schema_dir_copy, version), AvroCodec()
    old_interaction, old_trace = _old_models(lacking)
    interaction = old_interaction(
        agent_id="a", task_id="t", task_input="2+2?", mode="auto", final_answer="4"
    )
    decoded = reader.decode(old_writer.encode(interaction), InteractionEvent)
    assert all(getattr(decoded, name) == _empty(name) for name in lacking)
    assert (
        decoded.model_dump()
        == InteractionEvent.model_validate(interaction.model_dump(exclude=lacking)).model_dump()
    )
    trace = old_trace(
        trace_id=interaction.trace_id, agent_id="a", revision=1, interaction=interaction, reward=0.5
    )
    data = old_writer.encode(trace)
    assert data[2:10] != reader.catalog.fingerprint("io.atlas_stream.ScoredTrace")
    decoded_trace = reader.decode(data, ScoredTrace)
    assert all(getattr(decoded_trace.interaction, name) == _empty(name) for name in lacking)
    assert decoded_trace.production_reward is None


def test_new_interactions_carry_their_memory_entries() -> None:
    codec = AvroCodec()
    sent = InteractionEvent(
        agent_id="a",
        task_id="t",
        task_input="x",
        mode="auto",
        final_answer="y",
        memory_entries=["e1", "e2"],
        memory_held_back=["e3"],
    )
    received = codec.decode(codec.encode(sent), InteractionEvent)
    assert (received.memory_entries, received.memory_held_back) == (["e1", "e2"], ["e3"])


def test_enum_symbols_may_be_appended_never_removed_or_reordered() -> None:
    def contract(symbols: list[str]) -> dict[str, Any]:
        kind = {"type": "enum", "name": "K", "symbols": symbols}
        return {"type": "record", "name": "R", "fields": [{"name": "kind", "type": kind}]}

    old = contract(["gepa", "grpo"])
    assert evolution_problems(old, contract(["gepa", "grpo", "rim"])) == []
    for unsafe in (["grpo", "gepa", "rim"], ["gepa"], ["gepa", "rim"]):
        assert evolution_problems(old, contract(unsafe)) == ["field 'kind' changed type"]


def _writer_of(history: dict[str, int]) -> AvroCodec:
    """A codec that writes these contracts as their history files (name -> version) hold them."""
    catalog = SchemaCatalog.load()
    for name, version in history.items():
        path = SCHEMA_DIR / "history" / f"io.atlas_stream.{name}.v{version}.avsc"
        raw = json.loads(path.read_text())
        catalog.current[f"io.atlas_stream.{name}"] = fastavro.schema.parse_schema(
            raw, _write_hint=False, _force=True
        )
    return AvroCodec(catalog=catalog)


def test_messages_from_before_rim_calibration_decode_as_rim_version_0_and_gepa_jobs() -> None:
    """ScoredTrace v3, RetrainTrigger v1 and JobStatus v1 (before ``rim_version`` and the
    ``rim`` job kind) are still read: a trace as scored by RIM version 0."""
    old_writer = _writer_of({"ScoredTrace": 3, "RetrainTrigger": 1, "JobStatus": 1})
    reader = AvroCodec()

    class OldScoredTrace(ScoredTrace):
        def model_dump(self, **kwargs: Any) -> dict[str, Any]:
            later = {"interaction": LACKING[3]} | dict.fromkeys(LATER_SCORED_FIELDS, True)
            return super().model_dump(**{**kwargs, "exclude": later})

    event = InteractionEvent(
        agent_id="a", task_id="t", task_input="x", mode="auto", final_answer="y"
    )
    data = old_writer.encode(
        OldScoredTrace(
            trace_id=event.trace_id, agent_id="a", revision=1, interaction=event, reward=0.4
        )
    )
    assert data[2:10] == bytes.fromhex("85dcd1b52373271c")
    assert reader.decode(data, ScoredTrace).rim_version == 0
    trigger = RetrainTrigger(kind="gepa", agent_id="a", reason="old")
    assert reader.decode(old_writer.encode(trigger), RetrainTrigger) == trigger
    status = JobStatus(job_id="j", trigger_id="t", kind="grpo", agent_id="a", state="QUEUED", seq=1)
    assert reader.decode(old_writer.encode(status), JobStatus) == status
    new = AvroCodec().encode(RetrainTrigger(kind="rim", agent_id="a", reason="calibrate"))
    # a reader on the old JobKind refuses a rim trigger by name, never guesses (readers first)
    with pytest.raises(DecodeError, match="rim not found in reader symbol list"):
        AvroCodec(catalog=old_writer.catalog).decode(new, RetrainTrigger)


def test_the_rule_reaches_records_inside_arrays() -> None:
    """An InteractionEvent's rollouts are an array of records: a field appended to them needs
    a default like any other, and an array turned into a bare record is a changed type."""
    item = {"type": "record", "name": "Arm", "fields": [{"name": "role", "type": "string"}]}
    old = {"type": "record", "name": "E", "fields": [
        {"name": "arms", "type": {"type": "array", "items": item}}]}  # fmt: skip

    def with_items(fields: list[dict[str, Any]], array: bool = True) -> dict[str, Any]:
        record = dict(item, fields=fields)
        kind = {"type": "array", "items": record} if array else record
        return dict(old, fields=[{"name": "arms", "type": kind}])

    role = item["fields"][0]
    defaulted = {"name": "kind", "type": "string", "default": "prompt"}
    assert evolution_problems(old, with_items([role, defaulted])) == []
    assert evolution_problems(old, with_items([role, {"name": "kind", "type": "string"}])) == [
        "in field 'arms': added field 'kind' has no default"
    ]
    assert evolution_problems(old, with_items([role], array=False)) == ["field 'arms' changed type"]
