"""Managed prompts through the proxy: an agent that opts in (the ``X-Atlas-Managed-Prompt``
header) gets its current student prompt version, as published on ``atlas.prompts.v1`` (and
followed by ``runtime.prompts.PromptSubscriber``), in place of the system prompt it sent, with
the version's demonstrations as solved turns before its own; the event names the version, and
the task's arm when a canary rollout runs, exactly as the runtime's own events do.

An agent with no published version keeps its request as it is (the event names no version).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.prompts import PromptProvider
from runtime.rollout import with_canaries
from schemas.models import PromptRef, RolloutArm

MANAGED_HEADER = "X-Atlas-Managed-Prompt"
OPT_IN = frozenset({"1", "true", "on", "yes", "student"})
ROLE = "student"


@dataclass
class Managed:
    request: dict[str, Any]
    prompt_versions: list[PromptRef]
    rollouts: list[RolloutArm]


class ManagedPrompts:
    def __init__(self, prompts: PromptProvider):
        self.prompts = prompts

    def apply(self, agent_id: str, trace_id: str, request: dict[str, Any]) -> Managed | None:
        """The request with the agent's current student version for this trace (a canary's
        share of traces gets the canary), or None when nothing is published for the agent."""
        versions, arms = with_canaries(
            self.prompts.snapshot(agent_id), self.prompts.canaries(agent_id), trace_id
        )
        version = versions.get(ROLE)
        if version is None or (version.version == 0 and not version.text.strip()):
            return None
        shots: list[dict[str, Any]] = []
        for demo in version.demonstrations:
            shots += [
                {"role": "user", "content": demo.input},
                {"role": "assistant", "content": demo.output},
            ]
        turns = [m for m in request["messages"] if m["role"] not in ("system", "developer")]
        messages = [{"role": "system", "content": version.text}, *shots, *turns]
        return Managed(
            {**request, "messages": messages},
            [PromptRef(role=ROLE, version=version.version)],
            [arm for arm in arms if arm.role == ROLE],
        )
