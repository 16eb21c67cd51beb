"""The contract of an alert's change of state (``atlas.alerts.v1``), apart from the event
models of ``schemas/models.py`` for size; the detectors are in ``streams/alerts.py``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from schemas.models import Event, Id, Instant, new_id, utcnow

AlertKind = Literal["reward_drop", "agreement_below_floor", "dead_letter_rate"]
AlertStatus = Literal["firing", "resolved"]


class Alert(Event):
    """An alert's change of state on ``atlas.alerts.v1`` (compacted, key ``agent_id/kind``);
    made by ``streams/alerts.py``. ``agent_id`` is ``*`` for an alert over every agent."""

    schema_name: ClassVar[str] = "io.atlas_stream.Alert"

    alert_id: Id = Field(default_factory=new_id)
    agent_id: Id
    kind: AlertKind
    state: AlertStatus
    fired_at: Instant = Field(default_factory=utcnow)
    updated_at: Instant = Field(default_factory=utcnow)
    baseline_median: float | None = None
    mad: float | None = None
    recent_value: float
    threshold: float
    count: int
    message: str

    @property
    def key(self) -> str:
        return f"{self.agent_id}/{self.kind}"
