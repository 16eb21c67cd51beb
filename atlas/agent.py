"""Wiring a local agent from settings and configs/agent.yaml: backends, prompts, policy."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from atlas.settings import Settings
from runtime.backends.base import ModelBackend
from runtime.core import GenerationLimits
from runtime.policy import ModePolicyConfig


class AgentConfig(BaseModel):
    prompts: dict[str, str] = Field(description="Seed system prompt per role (version 0).")
    policy: ModePolicyConfig = Field(default_factory=ModePolicyConfig)
    limits: GenerationLimits = Field(default_factory=GenerationLimits)
    recent_reward_hours: int = Field(24, ge=1)


def load_agent_config(config_dir: Path) -> AgentConfig:
    path = config_dir / "agent.yaml"
    return AgentConfig.model_validate(yaml.safe_load(path.read_text()) or {})


def build_backends(settings: Settings) -> tuple[ModelBackend, ModelBackend]:
    """(student, teacher); one in-process model is shared when both roles use the same one."""
    built: dict[tuple[str, str | None], ModelBackend] = {}

    def backend(kind: str, model: str | None) -> ModelBackend:
        if (kind, model) in built:
            return built[(kind, model)]
        if kind == "openai":
            from runtime.backends.openai_backend import OpenAIBackend

            if not model:
                raise ValueError(
                    "an openai backend needs a model: set ATLAS_STUDENT_MODEL / ATLAS_TEACHER_MODEL"
                )
            key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
            built[(kind, model)] = OpenAIBackend(model, settings.openai_base_url, key)
        else:
            from runtime.backends.local import LocalBackend, default_model_dir

            folder = Path(model) if model else default_model_dir(settings.cache_dir)
            built[(kind, model)] = LocalBackend(folder, max_batch=settings.local_max_batch)
        return built[(kind, model)]

    return (
        backend(settings.student_backend, settings.student_model),
        backend(settings.teacher_backend, settings.teacher_model),
    )
