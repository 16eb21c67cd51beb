"""The canary rollout controller as a stream (`atlas worker rollouts`): each agent's rollouts
in a changelog-backed table, statuses to ``atlas.rollouts.v1``, and a decision's effect on the
prompts topic (a prompt rollout) or the checkpoints topic (a checkpoint rollout), all in the
batch's transaction.

The reward stream sends each scored trace of a task in a rollout as a
:class:`~streams.rollout.RolloutObservation` on ``atlas-rewards-rollout-observations``, keyed
by agent, in the trace's own transaction; the controller reads it, co-partitioned with its
table, under the learner's credentials (publishing a prompt version is a learner act) and
signs what it publishes on the prompts topic with the learner's key when it has one.

Guarantees (with the engine's, ``streams/engine.py``):
* a decision is taken once: the book that records it, the status and the prompts messages
  commit together or not at all; after ``kill -9`` the next owner restores the book from its
  changelog and ignores observations of a decided rollout;
* promoted: the canary's version is published as production (the same number and text) and its
  canary label removed (a tombstone); rolled back or aborted: the label is removed. A candidate
  queued behind it (label ``queued``, from a learning job with ``when_canary_runs: queue``)
  then starts as the next canary, with a fresh rollout id. Agents follow all of it at their
  next task;
* an operator who removed the canary label (``atlas prompts label --remove``, ``atlas rollout
  abort``) ended the rollout: its next observation closes it as aborted, publishing nothing on
  the prompts topic; a decision whose canary version this worker does not follow yet is
  retried (the batch is rolled back and taken again), never published from a guess.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Message

from runtime.follow import RoleVersionFollower
from runtime.rollout import promotion, started
from schemas.codec import AvroCodec, RegistryUnavailable
from schemas.models import CANARY, QUEUED, RolloutKind
from schemas.rollouts import RolloutStatus
from schemas.signing import Signer, Verifier
from schemas.topics import (
    ROLLOUT_EVENTS,
    ROLLOUT_OBSERVATIONS,
    ROLLOUTS,
    key_of,
    label_of_key,
    topic_of,
)
from streams.engine import Batch, Handler, Table
from streams.handlers import each_or_dead_letter
from streams.rollout import RolloutBook, RolloutObservation, ended_by_operator, observe
from streams.rollout_config import RolloutConfig

log = logging.getLogger(__name__)
PROCESSOR_NAME = "rollouts"
ROLLOUT_CHANGELOG = "atlas-rollouts-book-changelog"


class CanaryNotFollowed(RuntimeError):
    """A decision's canary version has not reached this worker's prompts follower yet."""


class CanaryFollower(RoleVersionFollower[Any]):
    """The canary labels of the prompts topic (``kind`` prompt) or of the checkpoints topic
    (``kind`` checkpoint) as the controller needs them: the current canary per agent/role and
    the rollouts whose label was removed or replaced (ended)."""

    def __init__(
        self,
        kafka_config: dict[str, str],
        codec: AvroCodec | None = None,
        verifier: Verifier | None = None,
        kind: RolloutKind = "prompt",
    ):
        event_type = ROLLOUT_EVENTS[kind]
        super().__init__(kafka_config, topic_of(event_type), event_type, codec, verifier)
        self.ended: set[str] = set()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        text = (key or b"").decode(errors="replace")
        agent_role = text[: -len(CANARY) - 1] if label_of_key(text) == CANARY else None
        before = None
        if agent_role is not None:
            agent_id, _, role = agent_role.rpartition("/")
            before = self.labelled(agent_id, CANARY).get(role)
        super()._apply(key, value)
        if before is not None:
            after = self.labelled(before.agent_id, CANARY).get(before.role)
            if after is None or after.rollout_id != before.rollout_id:
                with self._lock:
                    self.ended.add(before.rollout_id or "")

    def canary(self, agent_id: str, role: str, rollout_id: str) -> Any:
        found = self.labelled(agent_id, CANARY).get(role)
        return found if found is not None and found.rollout_id == rollout_id else None


def rollout_stream(
    config: RolloutConfig,
    codec: AvroCodec,
    canaries: CanaryFollower,
    signer: Signer | None = None,
    checkpoints: CanaryFollower | None = None,
) -> tuple[Table, Handler]:
    """The controller's table (agent -> RolloutBook) and the handler of its observations:
    prompt rollouts through ``canaries``, checkpoint rollouts through ``checkpoints`` (a
    decision on one, without it, is retried as not followed yet)."""
    books = Table(ROLLOUT_CHANGELOG, (ROLLOUT_OBSERVATIONS,))
    followers = {"prompt": canaries, "checkpoint": checkpoints}

    def follower(kind: str) -> CanaryFollower:
        found = followers.get(kind)
        if found is None:
            raise CanaryNotFollowed(f"this worker follows no {kind} canaries")
        return found

    def encoded(event: Any) -> tuple[str, bytes, bytes, list[tuple[str, bytes]] | None]:
        topic = topic_of(event)
        key, value = key_of(event), codec.encode(event)
        signed = [signer.header(topic, key, value)] if signer and topic != ROLLOUTS else None
        return topic, key, value, signed

    def acts(status: RolloutStatus) -> list[tuple[str, bytes, bytes | None, Any]]:
        """The prompts (or checkpoints) messages a decision sends: promote publishes the
        canary as production and removes its label; rolled back or aborted removes the label."""
        canaries = follower(status.kind)
        canary = canaries.canary(status.agent_id, status.role, status.rollout_id)
        if canary is None:
            if status.rollout_id in canaries.ended:
                return []  # the operator removed it meanwhile: nothing to undo
            raise CanaryNotFollowed(f"rollout {status.rollout_id}: its canary is not followed yet")
        production, (topic, key) = promotion(canary)
        sends = [encoded(production)] if status.state == "promoted" else []
        sends.append(removal(topic, key))
        queued = canaries.labelled(status.agent_id, QUEUED).get(status.role)
        if queued is not None:  # the candidate that waited for this decision starts now
            next_canary, (topic, key) = started(queued)
            sends += [encoded(next_canary), removal(topic, key)]
        return sends

    def removal(topic: str, key: bytes) -> tuple[str, bytes, None, Any]:
        return topic, key, None, [signer.header(topic, key, None)] if signer else None

    def observe_one(message: Message, batch: Batch) -> None:
        """One observation against its agent's book. Everything that can fail (reading,
        deciding, encoding, finding the canary) happens before anything is written or sent."""
        key, partition = message.key() or b"", message.partition()
        seen = RolloutObservation.from_bytes(message.value() or b"")
        if key != seen.agent_id.encode():
            raise ValueError(f"key {key[:80]!r} differs from the agent {seen.agent_id!r}")
        stored = books.get(partition, key)
        book = RolloutBook.model_validate_json(stored) if stored else RolloutBook()
        sends: list[tuple[str, bytes, bytes | None, Any]] = []
        for arm in seen.arms:
            ended = followers.get(arm.kind)
            if ended and arm.rollout_id in ended.ended and arm.rollout_id not in book.decided:
                book, ended = ended_by_operator(book, seen.agent_id, arm, seen.at, config)
                log.warning("rollout %s of %s ended by an operator", arm.rollout_id, key)
                sends.append(encoded(ended))
        book, statuses, why = observe(book, seen, config)
        for status in statuses:
            sends.append(encoded(status))
            if status.state != "running":
                sends.extend(acts(status))
                log.warning(
                    "rollout %s of %s/%s: %s: %s",
                    status.rollout_id,
                    status.agent_id,
                    status.role,
                    status.state,
                    status.reason,
                )
        batch.put(books, partition, key, book.model_dump_json().encode())
        for topic, out_key, value, headers in sends:
            batch.send(topic, out_key, value, headers)
        log.debug("%s: %s", key, why)

    retry = (RegistryUnavailable, CanaryNotFollowed)
    return books, each_or_dead_letter(observe_one, codec, PROCESSOR_NAME, retry)
