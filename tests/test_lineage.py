"""Version lineage is one model, ``schemas.models.Lineage``: the version events inherit its
fields without moving a field of their contracts, and the store's columns and queries follow
it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from runtime.prompts import next_versions
from schemas import models
from schemas.models import CheckpointEvent, Event, Lineage, PromptVersion, utcnow
from store.migrations import MIGRATIONS
from store.queries import CHECKPOINT_SELECT, PROMPT_SELECT

# The lineage columns as migration 1 has always created them: stores made before Lineage was
# a model have exactly these, so the generated DDL must not differ by a character.
LINEAGE_DDL = [
    ("job_id", "Nullable(String)"),
    ("trigger_id", "Nullable(String)"),
    ("window_start", "Nullable(DateTime64(3, 'UTC'))"),
    ("window_end", "Nullable(DateTime64(3, 'UTC'))"),
    ("heldout_reward", "Nullable(Float64)"),
    ("baseline_reward", "Nullable(Float64)"),
    ("non_degradation", "Nullable(Float64)"),
]
CONTRACTS = Path(models.__file__).parent / "avro"
VERSION_TABLES = {"prompt_versions": PromptVersion, "checkpoints": CheckpointEvent}


def _created_columns(table: str) -> list[tuple[str, str]]:
    """(name, type) of each column ``CREATE TABLE`` gives ``table``, in order."""
    for statement in (s for m in MIGRATIONS for s in m.statements):
        found = re.search(
            rf"CREATE TABLE IF NOT EXISTS {table} \((.*?)\n\s*\) ENGINE", statement, re.S
        )
        if found:
            lines = (line.strip().rstrip(",") for line in found[1].strip().splitlines())
            return [(name, kind) for name, _, kind in (line.partition(" ") for line in lines)]
    raise AssertionError(f"no CREATE TABLE {table}")


def _avro_fields(event_type: type[Event]) -> list[str]:
    contract = json.loads((CONTRACTS / f"{event_type.schema_name}.avsc").read_text())
    return [f["name"] for f in contract["fields"]]


def _selected(sql: str) -> list[str]:
    return sql.split("SELECT", 1)[1].split("FROM", 1)[0].replace(",", " ").split()


@pytest.mark.parametrize("table", VERSION_TABLES)
def test_the_lineage_columns_are_the_lineage_fields_with_the_types_they_always_had(
    table: str,
) -> None:
    assert [name for name, _ in LINEAGE_DDL] == list(Lineage.model_fields)
    columns = _created_columns(table)
    start = columns.index(LINEAGE_DDL[0])
    assert columns[start : start + len(LINEAGE_DDL)] == LINEAGE_DDL
    # The other columns are the event's other fields (demonstrations came in migration 3,
    # the memory policy in migration 8, labels and rollouts in migration 10).
    created = [name for name, _ in columns]
    later = ("demonstrations", "memory", "label", "rollout_id", "traffic_share")
    assert created == [f for f in VERSION_TABLES[table].model_fields if f not in later]


@pytest.mark.parametrize("event_type", [PromptVersion, CheckpointEvent], ids=lambda t: t.__name__)
def test_the_version_events_keep_their_contracts_field_order(event_type: type[Event]) -> None:
    fields = list(event_type.model_fields)
    assert fields == _avro_fields(event_type)
    start = fields.index("job_id")
    assert fields[start : start + len(Lineage.model_fields)] == list(Lineage.model_fields)
    assert issubclass(event_type, Lineage)


@pytest.mark.parametrize(
    ("sql", "model"), [(PROMPT_SELECT, PromptVersion), (CHECKPOINT_SELECT, CheckpointEvent)]
)
def test_the_version_queries_select_every_field_of_their_event(
    sql: str, model: type[BaseModel]
) -> None:
    assert _selected(sql) == list(model.model_fields)


def test_new_prompt_versions_carry_the_lineage_given_and_none_without() -> None:
    seed = PromptVersion(agent_id="a", role="student", version=4, text="old", source="seed")
    lineage = Lineage(job_id="j", trigger_id="t", window_end=utcnow(), heldout_reward=0.75)
    (made,) = next_versions({"student": seed}, {"student": "new"}, "gepa", lineage=lineage)
    assert (made.version, made.parent_version, made.text) == (5, 4, "new")
    assert Lineage(**made.model_dump(include=set(Lineage.model_fields))) == lineage
    (bare,) = next_versions({"student": seed}, {"student": "new"}, "manual")
    assert all(getattr(bare, name) is None for name in Lineage.model_fields)
