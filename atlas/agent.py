"""Wiring a local agent from settings and configs/agent.yaml: backends, prompts, policy."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from atlas.settings import Settings
from runtime.backends.base import ModelBackend
from runtime.policy import ModePolicyConfig
from runtime.prompts import StaticPrompts
from runtime.turns import GenerationLimits
from schemas.configfile import load_config
from schemas.models import MemoryPolicy
from streams.memory_config import load_memory_config


class AgentConfig(BaseModel):
    prompts: dict[str, str] = Field(description="Seed system prompt per role (version 0).")
    policy: ModePolicyConfig = Field(default_factory=ModePolicyConfig)
    limits: GenerationLimits = Field(default_factory=GenerationLimits)
    recent_reward_hours: int = Field(24, ge=1)
    memory: MemoryPolicy = Field(
        default_factory=MemoryPolicy,
        description="The seed's memory policy; a published student version carries its own.",
    )

    def seeds(self) -> StaticPrompts:
        """Version 0 of every role: the seed texts, the student with the seed memory policy."""
        return StaticPrompts(self.prompts, memory=self.memory)


def load_agent_config(config_dir: Path) -> AgentConfig:
    return load_config(config_dir / "agent.yaml", AgentConfig)


def memory_role(settings: Settings) -> str | None:
    """The role whose memory entries agents are shown (``configs/memory.yaml``); None when
    the stream keeps no memory."""
    config = load_memory_config(settings.config_dir)
    return config.role if config.enabled else None


class Backends:
    """Builds model backends from settings, once each: roles that name the same model share
    one in-process model."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._built: dict[tuple[str, str | None], ModelBackend] = {}

    def get(self, kind: str, model: str | None) -> ModelBackend:
        if (kind, model) not in self._built:
            self._built[(kind, model)] = self._build(kind, model)
        return self._built[(kind, model)]

    def _build(self, kind: str, model: str | None) -> ModelBackend:
        settings = self.settings
        if kind == "openai":
            from runtime.backends.openai_backend import OpenAIBackend

            if not model:
                raise ValueError(
                    "an openai backend needs a model name: set ATLAS_<ROLE>_MODEL"
                    " (e.g. ATLAS_STUDENT_MODEL=gpt-4o-mini)"
                )
            key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
            return OpenAIBackend(model, settings.openai_base_url, key)
        from runtime.backends.local import LocalBackend, default_model_dir

        folder = Path(model) if model else default_model_dir(settings.cache_dir)
        return LocalBackend(folder, max_batch=settings.local_max_batch)

    def student_and_teacher(self) -> tuple[ModelBackend, ModelBackend]:
        s = self.settings
        return self.get(s.student_backend, s.student_model), self.get(
            s.teacher_backend, s.teacher_model
        )

    def hot_loading(self, agent_id: str) -> tuple[ModelBackend, ModelBackend]:
        """Student and teacher as separate local models that follow the checkpoints
        published for ``agent_id`` (each role can run its own checkpoint, and a canary
        checkpoint beside it, loaded as a third model while its rollout runs)."""
        from runtime.backends.local import LocalBackend, default_model_dir
        from runtime.checkpoints import CheckpointFollower, HotLoadingBackend

        s = self.settings
        if "openai" in (s.student_backend, s.teacher_backend):
            raise ValueError("checkpoints can only be hot-loaded into local models")
        follower = CheckpointFollower(
            s.kafka_config(), codec=s.codec(), verifier=s.verifier()
        ).start()
        roles = {"student": s.student_model, "teacher": s.teacher_model}

        def canary_model(folder: Path) -> LocalBackend:  # a canary checkpoint, beside production
            return LocalBackend(folder, max_batch=s.local_max_batch)

        student, teacher = (
            HotLoadingBackend(
                LocalBackend(
                    Path(m) if m else default_model_dir(s.cache_dir), max_batch=s.local_max_batch
                ),
                follower,
                agent_id,
                role,
                canary_model,
            )
            for role, m in roles.items()
        )
        return student, teacher

    def judge_and_arbiter(self) -> tuple[ModelBackend, ModelBackend | None]:
        s = self.settings
        arbiter = self.get(s.arbiter_backend, s.arbiter_model) if s.arbiter_backend else None
        return self.get(s.judge_backend, s.judge_model), arbiter
