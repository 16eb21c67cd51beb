"""The agent's side of a canary rollout: which version of each role a task uses.

A role with a version under the ``canary`` label (``atlas.prompts.v1`` for a prompt version,
``atlas.checkpoints.v1`` for model weights; key ``agent_id/role@canary``, carrying
``rollout_id`` and ``traffic_share``) splits its tasks: a
task goes to the canary when :func:`unit_hash` of its trace id and the rollout id is below the
share, else to production. The split is deterministic (a replay of the trace, or another agent
process, assigns the same arm), independent across rollouts, and independent of the task's
content, so the two arms see the same kind of traffic over the same period: what the rollout's
sequential test (``streams/rollout_stats.py``) needs. Each task records its arm and both
versions (``InteractionEvent.rollouts``).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import NamedTuple, TypeVar

from runtime.backends.base import ChatResult, GenerationParams, Message, ModelBackend
from schemas.models import (
    CANARY,
    PRODUCTION,
    QUEUED,
    Arm,
    CheckpointEvent,
    PromptVersion,
    RolloutArm,
    RolloutKind,
)
from schemas.topics import topic_of, version_key

Labelled = TypeVar("Labelled", PromptVersion, CheckpointEvent)


def unit_hash(*parts: str) -> float:
    """A number in [0, 1) from ``parts``, uniform across distinct inputs and the same in every
    process (blake2b, not Python's salted ``hash``)."""
    digest = hashlib.blake2b("/".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def arm_of(trace_id: str, rollout_id: str, share: float) -> Arm:
    """The arm of the task of ``trace_id`` in rollout ``rollout_id`` at canary ``share``."""
    return "canary" if unit_hash(trace_id, rollout_id) < share else "production"


def with_canaries(
    production: dict[str, Labelled],
    canaries: dict[str, Labelled],
    trace_id: str,
    kind: RolloutKind = "prompt",
) -> tuple[dict[str, Labelled], list[RolloutArm]]:
    """The versions the task of ``trace_id`` uses, per role, and its arm in each rollout of
    ``kind``. A canary of a role the agent has no production version of (nothing to compare
    with) or of the version production already is, takes no part."""
    versions = dict(production)
    arms: list[RolloutArm] = []
    for role, canary in sorted(canaries.items()):
        current = production.get(role)
        if current is None or canary.rollout_id is None or canary.traffic_share is None:
            continue
        if canary.version == current.version:
            continue  # promoted already: the label's removal is on its way
        arm = arm_of(trace_id, canary.rollout_id, canary.traffic_share)
        if arm == "canary":
            versions[role] = canary
        arms.append(
            RolloutArm(
                role=role,
                rollout_id=canary.rollout_id,
                arm=arm,
                canary_version=canary.version,
                production_version=current.version,
                kind=kind,
            )
        )
    return versions, arms


def promotion(canary: Labelled) -> tuple[Labelled, tuple[str, bytes]]:
    """What promoting ``canary`` publishes: the same version (number, text or weights,
    lineage) as production, and the tombstone (topic, key) that removes its canary label; the
    tasks of its arm ran exactly this version, so the arm's figures stay the version's."""
    production = canary.model_copy(
        update={"label": PRODUCTION, "rollout_id": None, "traffic_share": None}
    )
    return production, _label_key(canary, CANARY)


def _label_key(version: Labelled, label: str) -> tuple[str, bytes]:
    """The (topic, key) of ``version``'s role under ``label``."""
    return topic_of(version), version_key(version.agent_id, version.role, label).encode()


def for_rollout(version: Labelled, share: float, running: Labelled | None, queue: bool) -> Labelled:
    """A new version as a learning job publishes it when candidates go through a canary:
    under the canary label with ``share`` and a fresh rollout id, replacing the ``running``
    canary of its role; or, with ``queue`` and a canary running, under the queued label, which
    the rollout controller starts as the next canary once the running one is decided."""
    if running is not None and queue:
        return version.model_copy(update={"label": QUEUED, "traffic_share": share})
    return version.model_copy(
        update={"label": CANARY, "rollout_id": uuid.uuid4().hex, "traffic_share": share}
    )


def started(queued: Labelled) -> tuple[Labelled, tuple[str, bytes]]:
    """What starting a queued candidate publishes: it as the canary (a fresh rollout id, its
    share) and the tombstone (topic, key) that removes its queued label."""
    canary = queued.model_copy(update={"label": CANARY, "rollout_id": uuid.uuid4().hex})
    return canary, _label_key(queued, QUEUED)


class TaskArms(NamedTuple):
    """Where one task runs in every rollout of its agent: the prompt version per role, the
    arm of each role whose model runs a canary checkpoint, every arm for the event, and
    production's student prompt when the task's student is a canary (prompt or model), whose
    un-taught answer to the task is then asked too (``production_answer``)."""

    prompts: dict[str, PromptVersion]
    model_arms: dict[str, Arm]
    rollouts: list[RolloutArm]
    shadow: PromptVersion | None


def task_arms(
    production: dict[str, PromptVersion],
    canaries: dict[str, PromptVersion],
    models: dict[str, tuple[CheckpointEvent, CheckpointEvent]],
    trace_id: str,
) -> TaskArms:
    """The arms of the task of ``trace_id`` in the agent's prompt rollouts (``canaries`` over
    ``production``) and model rollouts (``models``: role -> (production, canary) checkpoints),
    each split by its own rollout id."""
    prompts, arms = with_canaries(production, canaries, trace_id)
    _, model_arms = with_canaries(
        {role: pair[0] for role, pair in models.items()},
        {role: pair[1] for role, pair in models.items()},
        trace_id,
        "checkpoint",
    )
    arms += model_arms
    canary_student = any(a.role == "student" and a.arm == "canary" for a in arms)
    shadow = production.get("student") if canary_student else None
    return TaskArms(prompts, {a.role: a.arm for a in model_arms}, arms, shadow)


def model_rollout(backend: ModelBackend) -> tuple[CheckpointEvent, CheckpointEvent] | None:
    """(production, canary) checkpoints while ``backend`` runs a canary checkpoint beside
    production (``HotLoadingBackend.rollout``), else None."""
    rollout = getattr(backend, "rollout", None)
    return None if rollout is None else rollout()


def model_on_arm(backend: ModelBackend, arm: Arm | None) -> ModelBackend:
    """The model ``backend`` runs ``arm``'s tasks on: the canary checkpoint's beside
    production in a checkpoint rollout (``HotLoadingBackend.on_arm``), else ``backend``."""
    on_arm = getattr(backend, "on_arm", None)
    return backend if on_arm is None else on_arm(arm or "production")


def complete_on_arms(
    backend: ModelBackend,
    arms: Sequence[Arm],
    conversations: Sequence[Sequence[Message]],
    params: GenerationParams,
) -> list[ChatResult]:
    """Each conversation completed on its arm's model: one batched call per model the arms
    use (one, unless ``backend`` runs a canary checkpoint), results in order."""
    if getattr(backend, "on_arm", None) is None or set(arms) <= {"production"}:
        return backend.complete(conversations, params)
    rows: dict[Arm, list[int]] = {}
    for i, arm in enumerate(arms):
        rows.setdefault(arm, []).append(i)
    results: list[ChatResult | None] = [None] * len(conversations)
    for arm, indices in rows.items():
        batch = [conversations[i] for i in indices]
        for i, result in zip(
            indices, model_on_arm(backend, arm).complete(batch, params), strict=True
        ):
            results[i] = result
    return results  # type: ignore[return-value]
