"""Choosing the mode per task: teach only where teaching pays.

Inputs: a capability probe (the student's mean token log-probability on its own first
answer: how sure it is) and the agent's recent reward per mode, from a ``RecentRewards``
source the store implements (the runtime never imports the store). Rules, in order:

1. if the recent rewards show that taught modes do not beat ``auto`` by ``min_teaching_gain``
   (both with ``min_samples`` traces), use ``auto`` (a share ``explore_rate`` still goes to the
   default mode, so the comparison stays measured);
2. a confident probe (>= ``probe_auto_threshold``) → ``auto``; an unsure one
   (< ``probe_coach_threshold``) → ``coach``;
3. a recent mean reward below ``reward_coach_threshold`` → ``coach``;
4. otherwise ``default_mode``.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Protocol

from pydantic import BaseModel, Field

from schemas.models import Mode

TAUGHT_MODES: tuple[Mode, ...] = ("paired", "coach")


class RecentRewards(Protocol):
    def recent_by_mode(self, agent_id: str) -> dict[str, tuple[float, int]]:
        """mode -> (mean reward, number of traces) over the agent's recent traces."""
        ...


class ModePolicyConfig(BaseModel):
    default_mode: Mode = Field("paired", description="Mode when no rule applies.")
    probe_auto_threshold: float | None = Field(
        None, description="Mean token logprob of the first answer at/above which to skip teaching."
    )
    probe_coach_threshold: float | None = Field(
        None, description="Mean token logprob below which to coach (plan review first)."
    )
    reward_coach_threshold: float | None = Field(
        None, description="Recent mean reward below which to coach."
    )
    min_samples: int = Field(20, ge=1, description="Traces per mode before rewards are trusted.")
    min_teaching_gain: float = Field(
        0.02, description="How much taught modes must beat auto on reward to keep teaching."
    )
    explore_rate: float = Field(
        0.1, ge=0, le=1, description="Share of tasks that still run the default mode under rule 1."
    )
    cache_seconds: float = Field(30.0, ge=0, description="How long recent rewards are reused.")
    seed: int = 0


class ModePolicy:
    def __init__(
        self, config: ModePolicyConfig | None = None, rewards: RecentRewards | None = None
    ):
        self.config = config or ModePolicyConfig()
        self.rewards = rewards
        self._rng = random.Random(self.config.seed)
        self._cache: dict[str, tuple[float, dict[str, tuple[float, int]]]] = {}
        self._lock = threading.Lock()

    @property
    def uses_probe(self) -> bool:
        """Whether decisions read the probe (so the first answer must carry logprobs)."""
        c = self.config
        return c.probe_auto_threshold is not None or c.probe_coach_threshold is not None

    def _recent(self, agent_id: str) -> dict[str, tuple[float, int]]:
        if self.rewards is None:
            return {}
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(agent_id)
            if cached and now - cached[0] < self.config.cache_seconds:
                return cached[1]
        recent = self.rewards.recent_by_mode(agent_id)
        with self._lock:
            self._cache[agent_id] = (now, recent)
        return recent

    def decide(self, agent_id: str, probe: float | None) -> tuple[Mode, str]:
        """The mode for one task, and why (recorded in the event's metadata)."""
        c = self.config
        recent = self._recent(agent_id)
        auto = recent.get("auto")
        taught = [recent[m] for m in TAUGHT_MODES if m in recent and recent[m][1] >= c.min_samples]
        if taught and (auto is None or auto[1] < c.min_samples):
            with self._lock:
                explore = self._rng.random() < c.explore_rate
            if explore:
                return "auto", "explore: measure the untaught mode"
        if auto and auto[1] >= c.min_samples and taught:
            best = max(mean for mean, _ in taught)
            if best - auto[0] < c.min_teaching_gain:
                with self._lock:
                    explore = self._rng.random() < c.explore_rate
                if explore:
                    return c.default_mode, "explore: keep measuring the taught mode"
                return "auto", f"teaching does not pay: auto {auto[0]:.3f} vs taught {best:.3f}"
        if probe is not None:
            if c.probe_auto_threshold is not None and probe >= c.probe_auto_threshold:
                return "auto", f"confident probe {probe:.2f}"
            if c.probe_coach_threshold is not None and probe < c.probe_coach_threshold:
                return "coach", f"unsure probe {probe:.2f}"
        if c.reward_coach_threshold is not None and recent:
            total = sum(n for _, n in recent.values())
            mean = sum(m * n for m, n in recent.values()) / total if total else 1.0
            if total >= c.min_samples and mean < c.reward_coach_threshold:
                return "coach", f"low recent reward {mean:.3f}"
        return c.default_mode, "default"
