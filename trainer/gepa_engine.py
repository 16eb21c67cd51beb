"""GEPA prompt evolution over the agent's own runtime and RIM.

The candidate is the agent's system prompts (``student``, ``teacher``). The adapter's
``evaluate`` runs our closed loop with the candidate prompts and scores each result with RIM;
its reflective dataset hands the reflection model what the judges said, the reference, and
above all the users' edits. The best candidate then faces the gate on held-out examples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gepa import EvaluationBatch, optimize
from gepa.strategies.instruction_proposal import InstructionProposalSignature
from pydantic import BaseModel, Field

from runtime.backends.base import GenerationParams, ModelBackend
from runtime.core import GenerationLimits
from schemas.configfile import load_config
from schemas.models import Mode
from trainer.datasets import DatasetConfig, Example, Splits
from trainer.demonstrations import (
    DEMONSTRATIONS,
    DemonstrationConfig,
    DemonstrationProposer,
    candidates_from,
    encode,
)
from trainer.evaluation import GateConfig, GateDecision, PromptEvaluator, Scored, gate
from trainer.overrides import with_params

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]


class GepaConfig(BaseModel):
    """One GEPA job. ``configs/gepa.yaml`` holds the defaults; a trigger may override the
    budget and (through its params) any top-level scalar here."""

    budget: int = Field(40, ge=1, description="Metric calls (one = one example evaluated).")
    minibatch_size: int = Field(3, ge=1, description="Examples per reflective minibatch.")
    eval_mode: Mode = Field(
        "paired", description="The loop mode every candidate is measured in (auto: student only)."
    )
    components: list[str] = Field(
        default_factory=lambda: ["student", "teacher"],
        description="Which system prompts GEPA may rewrite (needs a reflection model).",
    )
    demonstrations: DemonstrationConfig = Field(default_factory=DemonstrationConfig)
    reflection_max_tokens: int = Field(384, ge=16, description="Length of a proposed prompt.")
    reflection_temperature: float = Field(0.7, ge=0)
    eval_batch_size: int = Field(8, ge=1, description="Tasks per batched runtime call.")
    seed: int = 0
    limits: GenerationLimits = Field(default_factory=GenerationLimits)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    def optimized_components(
        self, reflection: bool = True, demonstrations: bool = False
    ) -> list[str]:
        """Text components need a reflection model; the demonstrations need a candidate pool."""
        texts = ["student"] if self.eval_mode == "auto" else list(self.components)
        return (texts if reflection else []) + (
            [DEMONSTRATIONS] if demonstrations and self.demonstrations.enabled else []
        )

    def with_overrides(self, budget: int | None, params: Mapping[str, str]) -> GepaConfig:
        """This config with a trigger's budget and params (``name`` or ``section.name``)."""
        return with_params(self, params, "GEPA", "budget", budget)


def load_gepa_config(config_dir: Path) -> GepaConfig:
    return load_config(config_dir / "gepa.yaml", GepaConfig)


def reflection_lm(backend: ModelBackend, config: GepaConfig) -> Callable[[Any], str]:
    """GEPA's language-model callable over one of our backends."""
    params = GenerationParams(
        temperature=config.reflection_temperature, max_tokens=config.reflection_max_tokens
    )

    def call(prompt: str | list[dict[str, Any]]) -> str:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return backend.complete([messages], params)[0].text

    return call


def feedback_for(scored: Scored) -> str:
    example, reward = scored.example, scored.reward
    lines = [f"Reward {reward.score:.2f} (1 is best)."]
    if example.task.reference is not None:
        lines.append(f"The correct answer is {example.task.reference!r}.")
    if example.user_edit is not None:
        lines.append(f"A user corrected a past answer to exactly: {example.user_edit!r}.")
    if reward.rationale:
        lines.append(f"Judges: {reward.rationale}")
    return " ".join(lines)


class AtlasGepaAdapter:
    """The one place GEPA meets atlas: evaluate = runtime + RIM; reflection = judge rationales,
    references and user edits."""

    def __init__(
        self,
        evaluator: PromptEvaluator,
        fixed_prompts: dict[str, str],
        budget: int,
        reflection: Callable[[Any], str] | None,
        demonstrations: DemonstrationProposer | None,
        progress: Progress | None = None,
    ):
        self.evaluator = evaluator
        self.fixed_prompts = fixed_prompts
        self.budget = budget
        self.reflection = reflection
        self.demonstrations = demonstrations
        self.progress = progress

    def propose_new_texts(
        self,
        candidate: dict[str, str],
        reflective_dataset: Mapping[str, Sequence[Mapping[str, Any]]],
        components_to_update: list[str],
    ) -> dict[str, str]:
        """Demonstration sets from the proposer; system prompts from the reflection model
        with GEPA's own instruction-proposal prompt."""
        proposal = {}
        for component in components_to_update:
            if component == DEMONSTRATIONS and self.demonstrations is not None:
                proposal[component] = encode(self.demonstrations.propose())
            elif self.reflection is not None:
                proposal[component] = InstructionProposalSignature.run(
                    self.reflection,
                    {
                        "current_instruction_doc": candidate[component],
                        "dataset_with_feedback": reflective_dataset.get(component, []),
                        "prompt_template": None,
                    },
                )["new_instruction"]
        return proposal

    def evaluate(
        self, batch: list[Example], candidate: dict[str, str], capture_traces: bool = False
    ) -> EvaluationBatch:
        scored = self.evaluator.evaluate({**self.fixed_prompts, **candidate}, batch, self._tick)
        return EvaluationBatch(
            outputs=[s.event.final_answer for s in scored],
            scores=[s.reward.score for s in scored],
            trajectories=scored if capture_traces else None,
        )

    def _tick(self, _done: int) -> None:
        if self.progress is not None:
            calls = self.evaluator.calls
            self.progress(min(calls / self.budget, 1.0), f"{calls}/{self.budget} metric calls")

    def make_reflective_dataset(
        self,
        candidate: dict[str, str],
        eval_batch: EvaluationBatch,
        components_to_update: list[str],
    ) -> dict[str, list[dict[str, Any]]]:
        scored: Sequence[Scored] = eval_batch.trajectories or []
        dataset: dict[str, list[dict[str, Any]]] = {}
        for component in components_to_update:
            role = "student" if component == DEMONSTRATIONS else component
            records = []
            for s in scored:
                steps = [st for st in s.event.steps if st.role == role]
                if not steps:
                    continue
                records.append(
                    {
                        "Inputs": {"task": s.example.task.input},
                        "Generated Outputs": "\n".join(f"[{st.kind}] {st.content}" for st in steps),
                        "Feedback": feedback_for(s),
                    }
                )
            dataset[component] = records
        return dataset


class _GepaLog:
    """GEPA's progress lines into our logging (GEPA prints to stdout by default)."""

    def log(self, message: str) -> None:
        log.info("gepa: %s", message)


@dataclass
class GepaOutcome:
    current: dict[str, str]
    best: dict[str, str]
    changed_roles: list[str]
    decision: GateDecision
    metric_calls: int
    candidates: int
    validation_best: float
    validation_seed: float
    seconds: float

    def metrics(self) -> dict[str, float]:
        return {
            **self.decision.metrics(),
            "metric_calls": float(self.metric_calls),
            "candidates": float(self.candidates),
            "validation_best": self.validation_best,
            "validation_seed": self.validation_seed,
            "seconds": self.seconds,
        }


def evolve_prompts(
    current: dict[str, str],
    splits: Splits,
    evaluator: PromptEvaluator,
    reflection: Callable[[Any], str] | None,
    config: GepaConfig,
    progress: Progress | None = None,
    run_dir: Path | None = None,
) -> GepaOutcome:
    """GEPA on train/validation, then the gate on held-out: production vs the best candidate.

    ``current`` is production as a candidate: a system prompt per role and the student's
    demonstrations (JSON) under ``DEMONSTRATIONS``."""
    if not splits.train or not splits.validation or not splits.heldout:
        raise ValueError(f"not enough examples to optimize: {splits.sizes()}")
    started = time.perf_counter()
    current = {DEMONSTRATIONS: "[]", **current}
    pool = candidates_from(
        splits.train, config.demonstrations.min_reward, config.demonstrations.max_examples
    )
    components = config.optimized_components(reflection is not None, bool(pool))
    if not components:
        raise ValueError(
            "nothing to optimize: no reflection model for the prompts, and no edited or"
            " well-rewarded traces in the training split for demonstrations"
        )
    proposer = DemonstrationProposer(pool, config.demonstrations, config.seed) if pool else None
    seed = {role: current[role] for role in components}
    fixed = {role: text for role, text in current.items() if role not in components}

    def optimizing(fraction: float, message: str) -> None:
        if progress is not None:
            progress(0.8 * fraction, f"optimizing: {message}")

    adapter = AtlasGepaAdapter(evaluator, fixed, config.budget, reflection, proposer, optimizing)
    result = optimize(
        seed_candidate=seed,
        trainset=splits.train,
        valset=splits.validation,
        adapter=adapter,
        reflection_minibatch_size=config.minibatch_size,
        max_metric_calls=config.budget,
        seed=config.seed,
        run_dir=str(run_dir) if run_dir else None,
        raise_on_exception=False,
        display_progress_bar=False,
        logger=_GepaLog(),
    )
    best = {**fixed, **result.best_candidate}
    changed = [role for role in components if best[role] != current[role]]
    metric_calls = evaluator.calls

    heldout = splits.heldout
    total = (2 if changed else 1) * len(heldout)
    done = {"n": 0}

    def gating(n: int) -> None:
        done["n"] += n
        if progress is not None:
            progress(0.8 + 0.2 * done["n"] / total, f"held-out evaluation {done['n']}/{total}")

    current_scores = [s.reward.score for s in evaluator.evaluate(current, heldout, gating)]
    if changed:
        best_scores = [s.reward.score for s in evaluator.evaluate(best, heldout, gating)]
        decision = gate(best_scores, current_scores, config.gate)
    else:
        mean = sum(current_scores) / len(current_scores)
        decision = GateDecision(
            passed=False,
            candidate_reward=mean,
            current_reward=mean,
            non_degradation=1.0,
            retention=None,
            n=len(heldout),
            reason="GEPA found no candidate other than production",
        )
    return GepaOutcome(
        current=current,
        best=best,
        changed_roles=changed,
        decision=decision,
        metric_calls=metric_calls,
        candidates=len(result.candidates),
        validation_best=result.val_aggregate_scores[result.best_idx],
        validation_seed=result.val_aggregate_scores[0],
        seconds=time.perf_counter() - started,
    )
