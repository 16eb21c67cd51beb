"""Measuring prompts: run the agent's closed loop with given prompts, score with RIM; and the
held-out comparison every publish goes through (GEPA's prompts, GRPO's checkpoints, an
operator's own prompt): production and the candidate measured on the same held-out examples,
then the gate. This module is the only place that comparison and the gate live.

A candidate is a system prompt per role, optionally the student's demonstrations (JSON, under
``DEMONSTRATIONS``) and its memory policy (JSON, under ``MEMORY_POLICY``): what a prompt
version holds. With the agent's memory, every side is measured with the entries agents hold
now, under its own policy, never showing a held-out task the entry for its own input."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from rim.reward import Reward, Rim
from runtime.backends.base import ModelBackend
from runtime.core import Runtime
from runtime.memory import MemorySearch, OtherInputs
from runtime.prompts import StaticPrompts
from runtime.rollout import Labelled, for_rollout
from runtime.turns import GenerationLimits
from schemas.models import (
    PRODUCTION,
    CheckpointEvent,
    InteractionEvent,
    Lineage,
    MemoryPolicy,
    Mode,
    PromptVersion,
)
from trainer.datasets import Example
from trainer.demonstrations import DEMONSTRATIONS, decode

MEMORY_POLICY = "memory_policy"  # a candidate's key for the student's memory policy (JSON)


@dataclass
class Scored:
    example: Example
    event: InteractionEvent
    reward: Reward


class PromptEvaluator:
    """Runs examples through the agent's runtime (student + teacher, one forced mode so every
    candidate is measured the same way) and scores each result with RIM."""

    def __init__(
        self,
        agent_id: str,
        student: ModelBackend,
        teacher: ModelBackend,
        rim: Rim,
        mode: Mode = "paired",
        limits: GenerationLimits | None = None,
        batch_size: int = 8,
        memory: MemorySearch | None = None,
    ):
        self.agent_id = agent_id
        self.student = student
        self.teacher = teacher
        self.rim = rim
        self.mode = mode
        self.limits = limits or GenerationLimits()
        self.batch_size = batch_size
        self.memory = None if memory is None else OtherInputs(memory)
        self.calls = 0

    def evaluate(
        self,
        candidate: dict[str, str],
        examples: Sequence[Example],
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Scored]:
        """``candidate`` as the module's docstring describes it."""
        texts = {k: v for k, v in candidate.items() if k not in (DEMONSTRATIONS, MEMORY_POLICY)}
        shots = {"student": decode(candidate.get(DEMONSTRATIONS, "[]"))}
        policy = candidate.get(MEMORY_POLICY)
        memory = None if policy is None else MemoryPolicy.model_validate_json(policy)
        runtime = Runtime(
            self.agent_id,
            self.student,
            self.teacher,
            StaticPrompts(texts, shots, memory),
            limits=self.limits,
            memory=self.memory,
        )
        out: list[Scored] = []
        for start in range(0, len(examples), self.batch_size):
            chunk = examples[start : start + self.batch_size]
            events = runtime.run_many([e.task for e in chunk], self.mode)
            rewards = self.rim.score_many(events)
            out.extend(Scored(e, ev, r) for e, ev, r in zip(chunk, events, rewards, strict=True))
            self.calls += len(chunk)
            if on_batch is not None:
                on_batch(len(chunk))
        return out


class GateConfig(BaseModel):
    margin: float = Field(
        0.01, ge=0, description="The candidate's mean reward must beat production's by this."
    )
    min_non_degradation: float = Field(
        0.97,
        ge=0,
        le=1,
        description="Share of held-out examples where the candidate scores at least as well.",
    )
    success_reward: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A held-out example production answers with at least this reward is one"
        " it gets right.",
    )
    min_retention: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Share of the examples production gets right that the candidate must still"
        " get right. Non-degradation counts losses among all examples, so a candidate that"
        " breaks the few things a weak production got right hides behind the many it got"
        " wrong anyway; this counts them among what works.",
    )
    tolerance: float = Field(
        1e-6, ge=0, description="Reward differences below this count as a tie, not a loss."
    )


class CanaryPublishing(BaseModel):
    """How a learning job publishes what passed its gate: a canary on a share of live traffic
    (``runtime/rollout.py``), which `atlas worker rollouts` promotes or rolls back, or (share
    0) straight to production. A base of each job's config."""

    canary_share: float = Field(
        0.1, ge=0, lt=1, description="Share of tasks a passed candidate gets as a canary; 0: none."
    )
    when_canary_runs: Literal["replace", "queue"] = Field(
        "replace", description="What a new candidate does to a running canary of its role."
    )

    def as_published(self, version: Labelled, running: Labelled | None) -> Labelled:
        """``version`` under the label it goes out with: a canary (replacing ``running``, the
        role's canary now, or queued behind it), or production when the share is 0."""
        if self.canary_share <= 0:
            return version
        return for_rollout(version, self.canary_share, running, self.when_canary_runs == "queue")

    def published_as(self, version: PromptVersion | CheckpointEvent) -> str:
        """How :meth:`as_published` sent ``version`` out, for a job's summary ("" for
        production)."""
        if version.label == PRODUCTION:
            return ""
        return f" as {version.label} on {self.canary_share:.0%} of tasks"


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    candidate_reward: float
    current_reward: float
    non_degradation: float
    retention: float | None  # None: production got no held-out example right
    n: int
    reason: str

    def lineage(self, provenance: Lineage | None = None) -> Lineage:
        """``provenance`` (job, trigger, window) with this decision's held-out figures: the
        lineage of a version published on it."""
        figures = {
            "heldout_reward": self.candidate_reward,
            "baseline_reward": self.current_reward,
            "non_degradation": self.non_degradation,
        }
        return (provenance or Lineage()).model_copy(update=figures)

    def metrics(self) -> dict[str, float]:
        return {
            "heldout_candidate_reward": self.candidate_reward,
            "heldout_current_reward": self.current_reward,
            "heldout_non_degradation": self.non_degradation,
            "heldout_n": float(self.n),
        } | ({} if self.retention is None else {"heldout_retention": self.retention})


def gate(candidate: Sequence[float], current: Sequence[float], config: GateConfig) -> GateDecision:
    """Publish only if the mean reward rises by the margin, almost no example gets worse, and
    what production gets right stays right."""
    if len(candidate) != len(current) or not candidate:
        raise ValueError("the gate needs the same, non-empty held-out examples for both sides")
    n = len(candidate)
    candidate_mean = sum(candidate) / n
    current_mean = sum(current) / n
    pairs = list(zip(candidate, current, strict=True))
    kept = sum(c >= p - config.tolerance for c, p in pairs) / n
    right = [c for c, p in pairs if p >= config.success_reward]
    retention = sum(c >= config.success_reward for c in right) / len(right) if right else None
    failures = []
    if candidate_mean < current_mean + config.margin:
        failures.append(
            f"mean reward {candidate_mean:.3f} < production {current_mean:.3f}"
            f" + margin {config.margin:.3f}"
        )
    if kept < config.min_non_degradation:
        failures.append(f"non-degradation {kept:.3f} < required {config.min_non_degradation:.3f}")
    if retention is not None and retention < config.min_retention:
        failures.append(
            f"keeps {retention:.3f} of the {len(right)} examples production gets right"
            f" < required {config.min_retention:.3f}"
        )
    kept_right = "" if retention is None else f", keeps {retention:.3f} of {len(right)} right"
    reason = "; ".join(failures) or (
        f"mean reward {candidate_mean:.3f} vs production {current_mean:.3f},"
        f" non-degradation {kept:.3f}{kept_right} (n={n})"
    )
    return GateDecision(not failures, candidate_mean, current_mean, kept, retention, n, reason)


class AgreementGateConfig(BaseModel):
    """The gate a RIM calibration faces (`atlas retrain rim`): agreement with people on
    held-out traces, the calibrated judges against the current ones."""

    margin: float = Field(
        0.01, ge=0, le=1, description="The held-out MAE against humans must fall by this."
    )
    kappa_tolerance: float = Field(
        0.0, ge=0, le=2, description="The held-out Cohen's kappa may fall by at most this."
    )


def agreement_gate(
    current: tuple[float, float | None],
    candidate: tuple[float, float | None],
    n: int,
    config: AgreementGateConfig,
) -> tuple[bool, str]:
    """Publish a calibration only if, on ``n`` held-out traces, its (MAE, kappa) against the
    humans beats the current configuration's: MAE lower by the margin and kappa not lower
    than the tolerance allows (a kappa of None, all on one side, counts as 0). Returns
    (passed, reason with the figures); non-finite figures never pass."""
    (mae_now, kappa_now), (mae_new, kappa_new) = current, candidate
    k_now, k_new = kappa_now or 0.0, kappa_new or 0.0
    figures = [mae_now, mae_new, k_now, k_new]
    if n < 1 or not all(math.isfinite(v) for v in figures):
        return False, f"held-out figures are not usable (n={n}, MAE and kappa {figures})"
    failures = []
    if mae_new > mae_now - config.margin:
        failures.append(
            f"held-out MAE {mae_new:.3f} is not below the current {mae_now:.3f}"
            f" - margin {config.margin:.3f}"
        )
    if k_new < k_now - config.kappa_tolerance:
        failures.append(
            f"held-out kappa {k_new:.3f} < current {k_now:.3f} - {config.kappa_tolerance:.3f}"
        )
    reason = "; ".join(failures) or (
        f"held-out MAE {mae_now:.3f} -> {mae_new:.3f}, kappa {k_now:.3f} -> {k_new:.3f} (n={n})"
    )
    return not failures, reason


OnBatch = Callable[[int], None]
Measure = Callable[[Sequence[Example], OnBatch | None], list[Scored]]
"""One side of a held-out comparison: the examples scored in order, ``on_batch(n)`` after every
batch of ``n``. A side that needs a model of its own may load it inside the call, so that the
two sides' models are never held at once."""


def measure(evaluator: PromptEvaluator, candidate: dict[str, str]) -> Measure:
    """A side: ``candidate`` (prompts per role, optionally demonstrations) run by ``evaluator``."""
    return lambda examples, on_batch: evaluator.evaluate(candidate, examples, on_batch)


@dataclass(frozen=True)
class HeldoutComparison:
    decision: GateDecision
    current: list[float]  # production's reward per held-out example, in order
    candidate: list[float]  # the candidate's; production's own when there was no candidate


def compare_on_heldout(
    heldout: Sequence[Example],
    current: Measure,
    candidate: Measure | None,
    config: GateConfig,
    progress: Callable[[int, int], None] | None = None,
    no_candidate: str = "no candidate other than production",
) -> HeldoutComparison:
    """Production, then the candidate, on the same ``heldout`` examples, and :func:`gate` on
    the two score lists.

    ``candidate`` None means the engine found nothing but production: production alone is
    measured and the decision refuses, with ``no_candidate`` as its reason. ``progress(done,
    total)`` follows every batch, ``done`` counting the examples of both sides. ValueError
    without held-out examples: nothing is measured then."""
    if not heldout:
        raise ValueError("no held-out examples to compare production and a candidate on")
    total = (1 if candidate is None else 2) * len(heldout)
    done = 0

    def batch(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    before = [s.reward.score for s in current(heldout, batch)]
    if candidate is None:
        mean = sum(before) / len(before)
        refused = GateDecision(
            passed=False,
            candidate_reward=mean,
            current_reward=mean,
            non_degradation=1.0,
            retention=None,
            n=len(heldout),
            reason=no_candidate,
        )
        return HeldoutComparison(refused, before, list(before))
    after = [s.reward.score for s in candidate(heldout, batch)]
    return HeldoutComparison(gate(after, before, config), before, after)
