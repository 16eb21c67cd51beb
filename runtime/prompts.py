"""Where the runtime gets its prompts: fixed seeds, or the compacted prompts topic, live."""

from __future__ import annotations

from typing import Protocol

from runtime.follow import RoleVersionFollower
from schemas.codec import AvroCodec
from schemas.models import Demonstration, PromptVersion
from schemas.signing import Verifier
from schemas.topics import PROMPTS

ROLES = ("student", "teacher")


class PromptProvider(Protocol):
    def snapshot(self, agent_id: str) -> dict[str, PromptVersion]:
        """Every role's current prompt for the agent, read at one instant (never a mixture)."""
        ...


class StaticPrompts:
    """Fixed prompts (version 0, source ``seed``): the fallback before anything is published,
    and the way candidates are measured (texts and demonstrations per role)."""

    def __init__(
        self,
        texts: dict[str, str],
        demonstrations: dict[str, list[Demonstration]] | None = None,
    ):
        missing = [role for role in ROLES if role not in texts]
        if missing:
            raise ValueError(f"seed prompts missing for roles: {', '.join(missing)}")
        self.texts = texts
        self.demonstrations = demonstrations or {}

    def snapshot(self, agent_id: str) -> dict[str, PromptVersion]:
        return {
            role: PromptVersion(
                agent_id=agent_id,
                role=role,
                version=0,
                text=text,
                source="seed",
                demonstrations=self.demonstrations.get(role, []),
            )
            for role, text in self.texts.items()
        }


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
