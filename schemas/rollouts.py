"""The contract of a canary rollout's status (``atlas.rollouts.v1``), apart from the event
models of ``schemas/models.py`` for size; the rollout itself is described in
``streams/rollout.py``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from schemas.models import Event, Id, Instant, RolloutKind, utcnow

RolloutStateName = Literal["running", "promoted", "rolled_back", "aborted"]
DECIDED: frozenset[str] = frozenset({"promoted", "rolled_back", "aborted"})


class RolloutStatus(Event):
    schema_name: ClassVar[str] = "io.atlas_stream.RolloutStatus"

    agent_id: Id
    role: Id
    rollout_id: Id
    canary_version: int
    production_version: int
    state: RolloutStateName
    started_at: Instant
    updated_at: Instant = Field(default_factory=utcnow)
    canary_count: int = Field(ge=0)
    canary_mean: float | None = None
    production_count: int = Field(ge=0)
    production_mean: float | None = None
    lower: float
    upper: float
    alpha: float
    reason: str
    # Appended (contract v2): non-degradation on the canary's tasks, against production's
    # shadow answers (streams/rollout_stats.py, PairStats).
    paired_count: int = Field(0, ge=0)
    non_degradation: float | None = None
    non_degradation_upper: float | None = None
    right_count: int = Field(0, ge=0)
    retention: float | None = None
    retention_upper: float | None = None
    kind: RolloutKind = "prompt"

    @property
    def key(self) -> str:
        return f"{self.agent_id}/{self.role}/{self.rollout_id}"
