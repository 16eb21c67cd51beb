"""Building RIM from ``configs/rim.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from rim.calibration import Calibration
from rim.judges import (
    FormatJudge,
    Judge,
    LLMJudge,
    Principle,
    ReferenceMatchJudge,
    ToolSuccessJudge,
)
from rim.reward import RewardWeights, Rim
from runtime.backends.base import ModelBackend
from schemas.configfile import load_config


class JudgeSpec(BaseModel):
    name: str
    type: Literal["reference_match", "format", "tool_success", "llm"]
    enabled: bool = True
    weight: float = Field(1.0, ge=0)
    tolerance: float = Field(0.0, ge=0, description="reference_match: numeric tolerance.")
    principles: list[Principle] = Field(default_factory=list)
    temperatures: list[float] = Field(default_factory=lambda: [0.2, 0.5, 0.8])
    spread_threshold: float = 0.15
    uncertainty_threshold: float = 0.3
    retries: int = Field(1, ge=0)
    max_tokens: int = Field(256, ge=16)


class RimConfig(BaseModel):
    human_weight: float = Field(0.7, ge=0, le=1)
    judges: list[JudgeSpec]

    @property
    def needs_models(self) -> bool:
        return any(j.enabled and j.type == "llm" for j in self.judges)

    def as_calibration(self) -> Calibration:
        """These weights as a calibration with no map: RIM version 0 of every agent."""
        return Calibration(weights={j.name: j.weight for j in self.judges if j.enabled})


def load_rim_config(config_dir: Path) -> RimConfig:
    return load_config(config_dir / "rim.yaml", RimConfig)


def build_rim(
    config: RimConfig,
    judge_backend: ModelBackend | None = None,
    arbiter_backend: ModelBackend | None = None,
) -> Rim:
    judges: list[Judge] = []
    for spec in config.judges:
        if not spec.enabled:
            continue
        if spec.type == "reference_match":
            judges.append(ReferenceMatchJudge(spec.name, spec.tolerance))
        elif spec.type == "format":
            judges.append(FormatJudge(spec.name))
        elif spec.type == "tool_success":
            judges.append(ToolSuccessJudge(spec.name))
        else:
            if judge_backend is None:
                raise ValueError(
                    f"LLM judge {spec.name!r} needs a judge model: set ATLAS_JUDGE_BACKEND and"
                    " ATLAS_JUDGE_MODEL, or disable it in configs/rim.yaml"
                )
            if not spec.principles:
                raise ValueError(f"LLM judge {spec.name!r} has no principles")
            judges.append(
                LLMJudge(
                    spec.name,
                    spec.principles,
                    judge_backend,
                    arbiter_backend,
                    spec.temperatures,
                    spec.spread_threshold,
                    spec.uncertainty_threshold,
                    spec.retries,
                    spec.max_tokens,
                )
            )
    weights = RewardWeights(
        judges={j.name: j.weight for j in config.judges if j.enabled},
        human_weight=config.human_weight,
    )
    return Rim(judges, weights)
