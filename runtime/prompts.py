"""Where the runtime gets its prompts: fixed seeds, or the compacted prompts topic, live."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from runtime.follow import RoleVersionFollower
from schemas.codec import AvroCodec
from schemas.models import CANARY, Demonstration, Lineage, MemoryPolicy, PromptSource, PromptVersion
from schemas.signing import Verifier
from schemas.topics import PROMPTS

ROLES = ("student", "teacher")


class PromptProvider(Protocol):
    def snapshot(self, agent_id: str) -> dict[str, PromptVersion]:
        """Every role's current prompt for the agent, read at one instant (never a mixture)."""
        ...

    def canaries(self, agent_id: str) -> dict[str, PromptVersion]:
        """The agent's versions under the canary label, by role (runtime/rollout.py)."""
        ...


class StaticPrompts:
    """Fixed prompts (version 0, source ``seed``): the fallback before anything is published,
    and the way candidates are measured (texts and demonstrations per role, the student's
    memory policy; the default policy where none is given)."""

    def __init__(
        self,
        texts: dict[str, str],
        demonstrations: dict[str, list[Demonstration]] | None = None,
        memory: MemoryPolicy | None = None,
    ):
        missing = [role for role in ROLES if role not in texts]
        if missing:
            raise ValueError(f"seed prompts missing for roles: {', '.join(missing)}")
        self.texts = texts
        self.demonstrations = demonstrations or {}
        self.memory = memory or MemoryPolicy()

    def snapshot(self, agent_id: str) -> dict[str, PromptVersion]:
        return {
            role: PromptVersion(
                agent_id=agent_id,
                role=role,
                version=0,
                text=text,
                source="seed",
                demonstrations=self.demonstrations.get(role, []),
                memory=self.memory,
            )
            for role, text in self.texts.items()
        }

    def canaries(self, agent_id: str) -> dict[str, PromptVersion]:
        return {}


class PromptSubscriber(RoleVersionFollower[PromptVersion]):
    """Follows ``atlas.prompts.v1``: replays it from the beginning at start (the topic is
    compacted, so that is the current prompt per agent/role), then applies updates live on a
    background thread. ``snapshot`` is thread-safe; roles never published fall back."""

    def __init__(
        self,
        kafka_config: dict[str, str],
        fallback: PromptProvider,
        codec: AvroCodec | None = None,
        topic: str = PROMPTS,
        verifier: Verifier | None = None,
    ):
        super().__init__(kafka_config, topic, PromptVersion, codec, verifier)
        self.fallback = fallback

    def snapshot(self, agent_id: str) -> dict[str, PromptVersion]:
        base = self.fallback.snapshot(agent_id)
        with self._lock:
            for role in list(base):
                published = self._current.get((agent_id, role))
                if published is not None:
                    base[role] = published
        return base

    def canaries(self, agent_id: str) -> dict[str, PromptVersion]:
        return self.labelled(agent_id, CANARY)


class NoParentVersion(ValueError):
    """A rollback to the parent of a version that has none (or of nothing published)."""


class VersionNotStored(LookupError):
    """A rollback to a version the store does not hold."""


def restored_prompt(
    current: PromptVersion,
    to: int | None,
    seed: PromptVersion,
    stored: Callable[[int], PromptVersion | None],
) -> PromptVersion:
    """The version whose text and demonstrations a rollback of ``current`` restores: version
    ``to``, by default the current version's parent. Version 0 is ``seed`` (the configured
    text, no demonstrations); any other comes from ``stored`` (called only then). Raises
    ``NoParentVersion`` or ``VersionNotStored``, with a message an operator can read."""
    target = current.parent_version if to is None else to
    name = f"{current.agent_id}/{current.role}"
    if target is None:
        raise NoParentVersion(f"{name} v{current.version} has no parent to roll back to")
    found = seed if target == 0 else stored(target)
    if found is None:
        raise VersionNotStored(f"no stored version {target} of {name}")
    return found


def current_prompts(
    kafka_config: dict[str, str],
    agent_id: str,
    seeds: StaticPrompts,
    codec: AvroCodec | None = None,
) -> dict[str, PromptVersion]:
    """What the agent's runtime would use right now (the compacted topic, else the seeds)."""
    following = PromptSubscriber(kafka_config, seeds, codec=codec)
    with following.start() as subscriber:
        return subscriber.snapshot(agent_id)


def current_labels(
    kafka_config: dict[str, str], agent_id: str, codec: AvroCodec | None = None
) -> dict[tuple[str, str], PromptVersion]:
    """Every label of the agent's roles on the prompts topic now: (role, label) -> version
    (published ones only: the seeds carry no label)."""
    following = PromptSubscriber(kafka_config, StaticPrompts({r: "" for r in ROLES}), codec=codec)
    with following.start() as subscriber:
        return subscriber.labels(agent_id)


def newest_versions(labels: dict[tuple[str, str], PromptVersion]) -> dict[str, int]:
    """The highest version number per role under any label (:func:`current_labels`)."""
    newest: dict[str, int] = {}
    for (role, _label), version in labels.items():
        newest[role] = max(newest.get(role, 0), version.version)
    return newest


def next_versions(
    current: dict[str, PromptVersion],
    texts: dict[str, str],
    source: PromptSource,
    demonstrations: dict[str, list[Demonstration]] | None = None,
    lineage: Lineage | None = None,
    memory: MemoryPolicy | None = None,
    newest: dict[str, int] | None = None,
) -> list[PromptVersion]:
    """New versions for the roles given a text or demonstrations (and the student's, given a
    ``memory`` policy), each a child of the role's current version carrying ``lineage``; what
    is not given is carried over from it. Each is numbered after the role's current version
    and after ``newest[role]`` (the highest under any label: a canary or a queued candidate
    may be newer than production), so no two versions of a role share a number."""
    newest = newest or {}
    demonstrations = demonstrations or {}
    provenance = (lineage or Lineage()).model_dump()
    roles = {*texts, *demonstrations} | ({"student"} if memory is not None else set())
    return [
        PromptVersion(
            agent_id=current[role].agent_id,
            role=role,
            version=max(current[role].version, newest.get(role, 0)) + 1,
            parent_version=current[role].version,
            text=texts.get(role, current[role].text),
            demonstrations=demonstrations.get(role, current[role].demonstrations),
            source=source,
            memory=memory if memory is not None and role == "student" else current[role].memory,
            **provenance,
        )
        for role in sorted(roles)
    ]
