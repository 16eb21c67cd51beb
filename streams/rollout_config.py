"""The rollout controller's settings (``configs/rollout.yaml``), with documented defaults.

Read by `atlas worker rollouts` (the controller) and by whoever starts a canary (the share); a
missing or invalid file is a one-line ConfigError, never silent defaults.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from schemas.configfile import load_config
from streams.rollout_stats import NonDegradationConfig, RolloutTestConfig


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    test: RolloutTestConfig = Field(
        default_factory=RolloutTestConfig,
        description="The sequential test (streams/rollout_stats.py): alpha, margin, minimum"
        " and maximum rewards per arm, where its boundary is tightest.",
    )
    max_duration_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="A rollout still undecided this long after its first scored task, or whose"
        " canary arm saw no task for this long, is aborted (by trace time).",
    )
    non_degradation: NonDegradationConfig = Field(
        default_factory=NonDegradationConfig,
        description="Non-degradation on the canary's live tasks against production's shadow"
        " answers (streams/rollout_stats.py): minimum shares and the right-answer score.",
    )
    report_every: int = Field(
        25, ge=1, description="A 'running' status every this many observations of a rollout."
    )


def load_rollout_config(config_dir: Path) -> RolloutConfig:
    """``rollout.yaml`` in ``config_dir``, validated; ConfigError (one line) when it is
    missing or invalid."""
    return load_config(config_dir / "rollout.yaml", RolloutConfig)
