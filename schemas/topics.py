"""The topics of atlas-stream: which event each carries and how it is keyed.

Partition counts, retention and cleanup policies are deployment choices and live in
``configs/topics.yaml``; the names, value types and keys here are the contract.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from schemas.alerts import Alert
from schemas.models import (
    LABEL_PATTERN,
    PRODUCTION,
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


@dataclass(frozen=True)
class TopicContract:
    name: str
    event_type: type[Event]
    key_of: Callable[[Event], str]
    key_doc: str
    # The processor that dead-letters the topic's bad messages; others only skip them, so
    # each bad message is dead-lettered exactly once.
    owner: str = "sink"


def _attr(name: str) -> Callable[[Event], str]:
    return lambda event: str(getattr(event, name))


def version_key(agent_id: str, role: str, label: str = PRODUCTION) -> str:
    """The prompts (and checkpoints) topic's key: ``agent_id/role`` for production, else
    ``agent_id/role@label`` (roles hold no '@' or '/', labels neither)."""
    return f"{agent_id}/{role}" if label == PRODUCTION else f"{agent_id}/{role}@{label}"


def label_of_key(key: str) -> str:
    """The label a version key names: what follows the last '@' after the last '/' when it is
    a label, else production."""
    _, _, last = key.rpartition("/")
    role, at, label = last.rpartition("@")
    if at and role and re.fullmatch(LABEL_PATTERN, label):
        return label
    return PRODUCTION


def _agent_role(event: Event) -> str:
    label = getattr(event, "label", PRODUCTION)
    return version_key(event.agent_id, event.role, label)  # type: ignore[attr-defined]


def _keyed(event: Event) -> str:
    return event.key  # type: ignore[attr-defined]


INTERACTIONS = "atlas.interactions.v1"
FEEDBACK = "atlas.feedback.v1"
REWARDS = "atlas.rewards.v1"
PROMPTS = "atlas.prompts.v1"
CHECKPOINTS = "atlas.checkpoints.v1"
TRIGGERS = "atlas.triggers.v1"
JOBS = "atlas.jobs.v1"
DEADLETTER = "atlas.deadletter.v1"
MEMORY = "atlas.memory.v1"
ROLLOUTS = "atlas.rollouts.v1"
ALERTS = "atlas.alerts.v1"
# Internal to the reward worker, like its changelogs (not a contract: no Avro, no sink): each
# scored trace's agent, revision and reward, for the retrain policy (streams/policy_stream.py).
POLICY_OBSERVATIONS = "atlas-rewards-policy-observations"
# Internal too: each scored trace that carries a human verdict, keyed by agent, for the memory
# processor (streams/memory_stream.py), whose per-agent table must follow a source keyed by agent.
MEMORY_CANDIDATES = "atlas-rewards-memory-candidates"
# Internal too: each scored trace that took part in a canary rollout (arms, reward), keyed by
# agent, for the rollout controller (`atlas worker rollouts`, streams/rollout_stream.py).
ROLLOUT_OBSERVATIONS = "atlas-rewards-rollout-observations"
# Internal too: each scored trace's reward and verdicts (keyed by agent) and the stream's
# dead-letter tallies (key "*"), for the alert processor (streams/alerts_stream.py).
ALERT_OBSERVATIONS = "atlas-rewards-alert-observations"

TOPICS: dict[str, TopicContract] = {
    contract.name: contract
    for contract in (
        TopicContract(INTERACTIONS, InteractionEvent, _attr("trace_id"), "trace_id", "rewards"),
        TopicContract(FEEDBACK, FeedbackEvent, _attr("trace_id"), "trace_id", "rewards"),
        TopicContract(REWARDS, ScoredTrace, _attr("trace_id"), "trace_id"),
        TopicContract(PROMPTS, PromptVersion, _agent_role, "agent_id/role"),
        TopicContract(CHECKPOINTS, CheckpointEvent, _agent_role, "agent_id/role"),
        TopicContract(TRIGGERS, RetrainTrigger, _attr("agent_id"), "agent_id"),
        TopicContract(JOBS, JobStatus, _attr("job_id"), "job_id"),
        TopicContract(DEADLETTER, DeadLetter, _attr("source_topic"), "source topic"),
        # Compacted; a null value under an entry's key (a tombstone) removes it. Written only
        # by the memory processor (streams/memory_stream.py), which never reads it back: so
        # the sink, its one reader in the stream, dead-letters what cannot be read (as for
        # prompts, which the learner writes).
        TopicContract(MEMORY, MemoryEntry, _keyed, "agent_id/role/entry_id"),
        # Compacted: the latest status of each rollout; written by the rollout controller.
        TopicContract(ROLLOUTS, RolloutStatus, _keyed, "agent_id/role/rollout_id"),
        # Compacted: the latest event per agent/kind is the alert's current state. Written
        # only by the alert processor (streams/alerts_stream.py); the sink dead-letters what
        # it cannot read.
        TopicContract(ALERTS, Alert, _keyed, "agent_id/kind"),
    )
}
TOPIC_OF_EVENT: dict[type[Event], str] = {c.event_type: c.name for c in TOPICS.values()}


# What a rollout of each kind (RolloutKind) switches, each on its own topic.
ROLLOUT_EVENTS: dict[str, type[PromptVersion] | type[CheckpointEvent]] = {
    "prompt": PromptVersion,
    "checkpoint": CheckpointEvent,
}


def topic_of(event: Event | type[Event]) -> str:
    event_type = event if isinstance(event, type) else type(event)
    return TOPIC_OF_EVENT[event_type]


def key_of(event: Event) -> bytes:
    return TOPICS[topic_of(event)].key_of(event).encode()
