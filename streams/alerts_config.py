"""The alert processor's settings (``configs/alerts.yaml``), with documented defaults.

Read by the reward worker, which runs the alert processor (``streams/alerts.py``) beside the
reward processor; a missing or invalid file is a one-line ConfigError, never silent defaults.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from schemas.configfile import load_config


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RewardDropConfig(_Section):
    enabled: bool = Field(True, description="Off: no reward_drop alerts.")
    baseline_window: int = Field(
        200, ge=2, description="Traces in the baseline: the ones before the recent window."
    )
    min_baseline: int = Field(
        50, ge=2, description="Nothing is judged before the baseline holds this many traces."
    )
    recent_window: int = Field(20, ge=1, description="Traces in the recent (rolling) median.")
    k: float = Field(3.0, gt=0, description="Fire when the recent median is k robust scales low.")
    mad_floor: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Least robust scale: a constant baseline has MAD 0, where any dip would"
        " fire; with k 3, a drop of less than 0.15 never alerts.",
    )
    min_traces: int = Field(
        10,
        ge=1,
        description="The drop must hold at this many observations in a row to fire (and be"
        " gone for as many to resolve): a new trace, or a new revision of one in the windows.",
    )

    @model_validator(mode="after")
    def _baseline_fits(self) -> RewardDropConfig:
        if self.min_baseline > self.baseline_window:
            raise ValueError("min_baseline must not exceed baseline_window")
        return self


class AgreementConfig(_Section):
    enabled: bool = Field(True, description="Off: no agreement_below_floor alerts.")
    threshold: float = Field(
        0.5, ge=0, le=1, description="A score from this up is a pass, for judges and humans."
    )
    floor: float = Field(
        0.6, ge=0, le=1, description="Fire when the judges agree with people less often."
    )
    window: int = Field(50, ge=1, description="Latest traces with human feedback compared.")
    min_traces: int = Field(
        20, ge=1, description="Nothing is judged before the window holds this many."
    )
    sustain: int = Field(
        5, ge=1, description="Consecutive observations with feedback to fire/resolve."
    )

    @model_validator(mode="after")
    def _min_fits(self) -> AgreementConfig:
        if self.min_traces > self.window:
            raise ValueError("min_traces must not exceed window")
        return self


class DeadLetterConfig(_Section):
    enabled: bool = Field(True, description="Off: no dead_letter_rate alerts.")
    window: int = Field(1000, ge=1, description="Events the reward stream handled, latest.")
    min_events: int = Field(100, ge=1, description="Nothing is judged on fewer events.")
    max_rate: float = Field(
        0.05, ge=0, lt=1, description="Fire when more of the window's events are dead letters."
    )
    sustain: int = Field(3, ge=1, description="Consecutive stream batches to fire/resolve.")


class AlertsConfig(_Section):
    enabled: bool = Field(True, description="Off: the reward worker raises no alerts.")
    reward_drop: RewardDropConfig = Field(default_factory=RewardDropConfig)
    agreement: AgreementConfig = Field(default_factory=AgreementConfig)
    dead_letters: DeadLetterConfig = Field(default_factory=DeadLetterConfig)
    webhook_url: SecretStr | None = Field(
        None,
        description="POST every alert event here as JSON (http or https). It may carry a"
        " token: it is never logged whole (scheme and host only).",
    )
    webhook_timeout_s: float = Field(5.0, gt=0, le=60, description="Per POST.")
    retrain_on_reward_drop: bool = Field(
        False,
        description="A firing reward_drop also sends a RetrainTrigger (kind and data window of"
        " configs/retrain_policy.yaml).",
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_only(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value


def load_alerts_config(config_dir: Path) -> AlertsConfig:
    """``alerts.yaml`` in ``config_dir``, validated; ConfigError (one line) when it is missing
    or invalid."""
    return load_config(config_dir / "alerts.yaml", AlertsConfig)
