"""Typed mirrors of the Avro contracts in ``schemas/avro``.

Field names, order and optionality match the ``.avsc`` files exactly (a test holds them
together); the ``.avsc`` files are the contract, these classes are how Python code touches it.
They also refuse what Avro cannot: NaN and infinity in any number, ids that are empty or blank.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

Mode = Literal["auto", "paired", "coach"]
FeedbackKind = Literal["approve", "reject", "edit", "rating", "tool_outcome"]
PromptSource = Literal["seed", "gepa", "manual", "rollback", "calibration"]
CheckpointSource = Literal["grpo", "manual", "rollback"]
JobKind = Literal["gepa", "grpo", "rim"]
MemorySource = Literal["edit", "approval"]
Arm = Literal["canary", "production"]
RolloutKind = Literal["prompt", "checkpoint"]  # what a rollout switches
JobState = Literal["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "REJECTED"]
TERMINAL_JOB_STATES: frozenset[str] = frozenset({"SUCCEEDED", "FAILED", "REJECTED"})


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or blank")
    return value


# An id joins events and names rows and keys: never empty or only blanks.
Id = Annotated[str, AfterValidator(_not_blank)]
PATH_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def path_component(value: str, what: str = "id") -> str:
    """``value`` if it can name a file or folder as it is (no separators, no '..', no leading
    dot), else ValueError: every id that becomes part of a path goes through here."""
    if not PATH_SAFE.fullmatch(value):
        raise ValueError(
            f"{what} {value[:80]!r} cannot name a file: use letters, digits, '.', '_' and '-'"
            " (at most 128, starting with a letter or digit)"
        )
    return value


# Labels of a published version (runtime/labels.py): production is what agents use, canary a
# candidate on a share of traffic, others (staging, ...) are operators' bookmarks.
PRODUCTION = "production"
CANARY = "canary"
QUEUED = "queued"  # a candidate waiting for the running canary's decision, with its share
LABEL_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"


def under(root: Path, *parts: str) -> Path:
    """``root/part/...`` where each part is a :func:`path_component` and the resolved path
    stays under ``root`` (no symlink leads out): for every path built from an event's ids."""
    for part in parts:
        path_component(part, "path part")
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{path} leads outside {root}")
    return path


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2262, 1, 1, tzinfo=UTC)  # inside every store's 64-bit time range


def _plausible(value: datetime) -> datetime:
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    if not EARLIEST <= aware < LATEST:
        raise ValueError(f"{value.isoformat()} is not between 1970 and 2262")
    return value


# Every instant an event carries: timestamp-millis in Avro, DateTime64(3) in the store.
Instant = Annotated[datetime, AfterValidator(_plausible)]


def utcnow() -> datetime:
    """Now, truncated to the millisecond the Avro timestamps carry."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_id() -> str:
    return str(uuid.uuid4())


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


class Event(Record):
    """A top-level event; ``schema_name`` is the Avro full name of its contract."""

    schema_name: ClassVar[str]


class PromptRef(Record):
    role: str
    version: int


class RolloutArm(Record):
    """A task's part in a canary rollout of one role (the arm decides the version it used)."""

    role: str
    rollout_id: str
    arm: Arm
    canary_version: int
    production_version: int
    kind: RolloutKind = "prompt"  # appended (InteractionEvent v4)


class Step(Record):
    index: int
    role: str
    kind: str
    content: str
    verdict: str | None = None
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float


class Usage(Record):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class InteractionEvent(Event):
    schema_name: ClassVar[str] = "io.atlas_stream.InteractionEvent"

    event_id: Id = Field(default_factory=new_id)
    trace_id: Id = Field(default_factory=new_id)
    agent_id: Id
    created_at: Instant = Field(default_factory=utcnow)
    task_id: str
    task_family: str | None = None
    task_input: str
    reference: str | None = None
    mode: Mode
    prompt_versions: list[PromptRef] = Field(default_factory=list)
    models: dict[str, str] = Field(default_factory=dict)
    steps: list[Step] = Field(default_factory=list)
    final_answer: str
    baseline_answer: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_ms: float = 0.0
    metadata: dict[str, str] = Field(default_factory=dict)
    # Appended (contract v2): the memory entries the runtime put before the task, in order.
    memory_entries: list[str] = Field(default_factory=list)
    # Appended (contract v3): entries that matched but the randomized holdout kept back.
    memory_held_back: list[str] = Field(default_factory=list)
    rollouts: list[RolloutArm] = Field(default_factory=list)
    # Appended (contract v4): production's shadow answer on a student canary task.
    production_answer: str | None = None


class FeedbackEvent(Event):
    schema_name: ClassVar[str] = "io.atlas_stream.FeedbackEvent"

    event_id: Id = Field(default_factory=new_id)
    trace_id: Id
    agent_id: str | None = None
    created_at: Instant = Field(default_factory=utcnow)
    kind: FeedbackKind
    edited_text: str | None = None
    rating: float | None = None
    rating_min: float = 1.0
    rating_max: float = 5.0
    tool_name: str | None = None
    tool_success: bool | None = None
    user_id: str | None = None
    comment: str | None = None


class JudgeScore(Record):
    judge: str
    score: float | None = None
    rationale: str = ""
    uncertainty: float | None = None
    escalated: bool = False
    samples: int = 1
    error: str | None = None


class ScoredTrace(Event):
    schema_name: ClassVar[str] = "io.atlas_stream.ScoredTrace"

    trace_id: Id
    agent_id: Id
    revision: int
    scored_at: Instant = Field(default_factory=utcnow)
    interaction: InteractionEvent
    reward: float
    judge_scores: list[JudgeScore] = Field(default_factory=list)
    rationale: str = ""
    uncertainty: float = 0.0
    escalated: bool = False
    human_score: float | None = None
    feedback_count: int = 0
    baseline_reward: float | None = None
    errors: list[str] = Field(default_factory=list)
    rim_version: int = Field(0, ge=0)  # appended (v4): 0 = configs/rim.yaml, n = calibration
    production_reward: float | None = None  # appended (v5): production_answer's judge score


class Demonstration(Record):
    input: str
    output: str


class MemoryPolicy(Record):
    """How the runtime uses the demonstration memory for a task: a component of the student's
    prompt version, so a change of it faces the held-out gate and rolls out like a prompt.
    The seed's (version 0) is ``memory:`` in ``configs/agent.yaml``; a version published
    before this component existed reads as these defaults.

    Off by default: memory helps some tasks and hurts others (``benchmarks/memory.py`` on the
    local model: +25 points on extraction, -8 on arithmetic, where the student copies a
    similar task's number), so it is turned on per agent by a policy that passed the gate."""

    enabled: bool = Field(False, description="Off: no lookup, no entries shown.")
    k: int = Field(3, ge=0, le=32, description="Most entries put before a task.")
    token_budget: int = Field(
        512, ge=0, le=32_768, description="Rough tokens the entries of one task may take, in all."
    )
    min_score: float = Field(
        0.0, ge=0, description="An entry is shown only with a BM25 score above this."
    )


class Lineage(Record):
    """Where a published prompt or checkpoint came from: the job, the trigger and the data
    window that made it, and its held-out figures against the version it replaced. One model
    for both version events, the store's columns and the queries that read them back.

    ``parent_version`` is not here: it is the version chain, set from the current version by
    whoever publishes, and both contracts place it right after ``version``, apart from these
    fields, where a base class cannot put it (a base's fields stay one block)."""

    job_id: str | None = None
    trigger_id: str | None = None
    window_start: Instant | None = None
    window_end: Instant | None = None
    heldout_reward: float | None = None
    baseline_reward: float | None = None
    non_degradation: float | None = None


# A model's fields run base by base in reverse MRO order, so ``class X(Lineage, Head)`` lists
# Head's fields, then Lineage's, then X's own: the order of the .avsc, which the codec and a
# test hold the models to. The heads are the fields before the lineage.
class _PromptHead(Event):
    agent_id: Id
    role: Id
    version: int
    parent_version: int | None = None
    text: str
    source: PromptSource
    created_at: Instant = Field(default_factory=utcnow)


class PromptVersion(Lineage, _PromptHead):
    schema_name: ClassVar[str] = "io.atlas_stream.PromptVersion"

    demonstrations: list[Demonstration] = Field(default_factory=list)
    memory: MemoryPolicy = Field(default_factory=MemoryPolicy)  # read from the student's
    # Appended (contract v4): the label it is published under, and a canary's rollout.
    label: str = Field(PRODUCTION, pattern=LABEL_PATTERN)
    rollout_id: str | None = None
    traffic_share: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _canary_has_a_rollout(self) -> PromptVersion:
        check_rollout_fields(self.label, self.rollout_id, self.traffic_share)
        return self


def check_rollout_fields(label: str, rollout_id: str | None, share: float | None) -> None:
    """A labelled version's rollout fields agree with its label (ValueError if not)."""
    canary, shared = label == CANARY, label in (CANARY, QUEUED)
    if canary != (rollout_id is not None) or shared != (share is not None):
        raise ValueError(
            "rollout_id is set under the canary label only, traffic_share under the canary"
            " and queued labels only"
        )


class _CheckpointHead(Event):
    agent_id: Id
    role: Id
    version: int
    parent_version: int | None = None
    uri: str
    base_model: str
    sha256: dict[str, str] = Field(default_factory=dict)
    source: CheckpointSource
    created_at: Instant = Field(default_factory=utcnow)


class CheckpointEvent(Lineage, _CheckpointHead):
    schema_name: ClassVar[str] = "io.atlas_stream.CheckpointEvent"

    # Appended (contract v2): labels and canary rollouts, as for prompt versions.
    label: str = Field(PRODUCTION, pattern=LABEL_PATTERN)
    rollout_id: str | None = None
    traffic_share: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _canary_has_a_rollout(self) -> CheckpointEvent:
        check_rollout_fields(self.label, self.rollout_id, self.traffic_share)
        return self


class RetrainTrigger(Event):
    schema_name: ClassVar[str] = "io.atlas_stream.RetrainTrigger"

    trigger_id: Id = Field(default_factory=new_id)
    kind: JobKind
    agent_id: Id
    reason: str
    requested_by: str | None = None
    created_at: Instant = Field(default_factory=utcnow)
    window_start: Instant | None = None
    window_end: Instant | None = None
    budget: int | None = None
    params: dict[str, str] = Field(default_factory=dict)


class JobStatus(Event):
    schema_name: ClassVar[str] = "io.atlas_stream.JobStatus"

    job_id: Id
    trigger_id: Id
    kind: JobKind
    agent_id: Id
    state: JobState
    seq: int
    updated_at: Instant = Field(default_factory=utcnow)
    progress: float | None = None
    message: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    result_version: int | None = None
    worker: str | None = None


class DeadLetter(Event):
    schema_name: ClassVar[str] = "io.atlas_stream.DeadLetter"

    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None = None
    original: bytes
    reason: str
    error_type: str
    processor: str
    failed_at: Instant = Field(default_factory=utcnow)


class MemoryEntry(Event):
    """A solved example on ``atlas.memory.v1`` (compacted, key ``agent_id/role/entry_id``):
    the input and the output the agent should have given, from a user's edit or an approved,
    well-rewarded answer. A null value under the same key (a tombstone) removes it; the
    processor that makes them is ``streams/memory.py``."""

    schema_name: ClassVar[str] = "io.atlas_stream.MemoryEntry"

    agent_id: Id
    role: Id
    entry_id: Id
    input: str
    output: str
    source: MemorySource
    source_trace_id: Id
    reward: float
    terms: list[str] = Field(default_factory=list)
    created_at: Instant = Field(default_factory=utcnow)
    # Appended (contract v2): set when the memory retired the entry because its use correlates
    # with lower reward; agents drop a retired entry, the store keeps it with these figures.
    retired_reason: str | None = None
    uses: int = Field(0, ge=0)
    reward_when_used: float | None = None
    reward_when_not_used: float | None = None

    @property
    def key(self) -> str:
        return memory_key(self.agent_id, self.role, self.entry_id)

    @property
    def retired(self) -> bool:
        return self.retired_reason is not None


def memory_key(agent_id: str, role: str, entry_id: str) -> str:
    """The memory topic's key; entry ids and roles hold no '/', so :func:`split_memory_key`
    recovers the three even when the agent id has one."""
    return f"{agent_id}/{role}/{entry_id}"


def split_memory_key(key: str) -> tuple[str, str, str]:
    """(agent_id, role, entry_id) of a memory key; ValueError if it is not one."""
    parts = key.rsplit("/", 2)
    if len(parts) != 3 or not all(part.strip() for part in parts):
        raise ValueError(f"{key[:120]!r} is not a memory key (agent_id/role/entry_id)")
    return parts[0], parts[1], parts[2]
