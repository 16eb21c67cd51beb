"""GEPA prompt evolution over the agent's own runtime and RIM.

The candidate is the agent's system prompts (``student``, ``teacher``). The adapter's
``evaluate`` runs our closed loop with the candidate prompts and scores each result with RIM;
its reflective dataset hands the reflection model what the judges said, the reference, and
above all the users' edits. GEPA's progress comes through its callback API; the best
candidate then faces the held-out comparison (``trainer/evaluation.py``). Every knob of a run
is a field of ``GepaConfig``, documented in ``trainer/gepa_config.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gepa import EvaluationBatch, optimize
from gepa.core.callbacks import BudgetUpdatedEvent, ValsetEvaluatedEvent
from gepa.strategies.instruction_proposal import InstructionProposalSignature

from runtime.backends.base import GenerationParams, ModelBackend
from trainer.datasets import Example, Splits
from trainer.demonstrations import (
    DEMONSTRATIONS,
    DemonstrationProposer,
    candidates_from,
    encode,
)
from trainer.evaluation import (
    GateDecision,
    PromptEvaluator,
    Scored,
    compare_on_heldout,
    measure,
)
from trainer.gepa_config import GepaConfig

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]


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
        reflection: Callable[[Any], str] | None,
        demonstrations: DemonstrationProposer | None,
    ):
        self.evaluator = evaluator
        self.fixed_prompts = fixed_prompts
        self.reflection = reflection
        self.demonstrations = demonstrations

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
        scored = self.evaluator.evaluate({**self.fixed_prompts, **candidate}, batch)
        return EvaluationBatch(
            outputs=[s.event.final_answer for s in scored],
            scores=[s.reward.score for s in scored],
            trajectories=scored if capture_traces else None,
        )

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


class GepaProgress:
    """GEPA's own progress, through its callback API (``optimize(callbacks=...)``), as
    ``progress(fraction, message)``: the iteration, the metric calls spent of the budget and
    the best validation score so far, after the seed's validation and after every evaluation
    GEPA counts. ``fraction`` is ``share`` times the spent share of the budget: it never
    decreases and never passes ``share``.

    It is a GEPA stopper (``stop_callbacks=``) too. GEPA logs and swallows a callback's
    exception; one raised by ``progress`` (a job ended from outside, a reporter that cannot
    send) is kept instead, no more progress is reported, GEPA stops before its next
    iteration, and :meth:`raise_if_failed` raises it."""

    def __init__(self, progress: Progress, budget: int, share: float = 0.8):
        self.progress = progress
        self.budget = budget
        self.share = share
        self.calls = 0
        self.best: float | None = None
        self.error: Exception | None = None

    def on_valset_evaluated(self, event: ValsetEvaluatedEvent) -> None:
        score = event["average_score"]
        self.best = score if self.best is None else max(self.best, score)
        if event["iteration"] == 0:  # the seed's, before GEPA counts its calls
            self.calls = max(self.calls, event["num_examples_evaluated"])
        self._report(event["iteration"])

    def on_budget_updated(self, event: BudgetUpdatedEvent) -> None:
        self.calls = max(self.calls, event["metric_calls_used"])
        self._report(event["iteration"])

    def _report(self, iteration: int) -> None:
        if self.error is not None:
            return
        best = "" if self.best is None else f", best validation score {self.best:.3f}"
        try:
            self.progress(
                self.share * min(self.calls / self.budget, 1.0),
                f"optimizing: iteration {iteration}, {self.calls}/{self.budget} metric calls"
                + best,
            )
        except Exception as exc:
            self.error = exc

    def __call__(self, _state: object) -> bool:
        """GEPA's stop question: stop once ``progress`` has failed."""
        return self.error is not None

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


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
    """GEPA on train/validation, then the held-out comparison (``compare_on_heldout``):
    production vs the best candidate, or production alone and a refusal when GEPA found
    nothing else.

    ``current`` is production as a candidate: a system prompt per role and the student's
    demonstrations (JSON) under ``DEMONSTRATIONS``. ``progress`` gets GEPA's own progress
    (``GepaProgress``) up to 0.8, then the held-out evaluation's up to 1.0; an exception it
    raises ends the search and is raised here."""
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

    tracker = None if progress is None else GepaProgress(progress, config.budget)
    result = optimize(
        seed_candidate=seed,
        trainset=splits.train,
        valset=splits.validation,
        adapter=AtlasGepaAdapter(evaluator, fixed, reflection, proposer),
        reflection_minibatch_size=config.minibatch_size,
        max_metric_calls=config.budget,
        stop_callbacks=None if tracker is None else [tracker],
        callbacks=None if tracker is None else [tracker],
        seed=config.seed,
        run_dir=str(run_dir) if run_dir else None,
        raise_on_exception=False,
        display_progress_bar=False,
        logger=_GepaLog(),
    )
    if tracker is not None:
        tracker.raise_if_failed()
    best = {**fixed, **result.best_candidate}
    changed = [role for role in components if best[role] != current[role]]
    metric_calls = evaluator.calls

    def gating(done: int, total: int) -> None:
        if progress is not None:
            progress(0.8 + 0.2 * done / total, f"held-out evaluation {done}/{total}")

    comparison = compare_on_heldout(
        splits.heldout,
        measure(evaluator, current),
        measure(evaluator, best) if changed else None,
        config.gate,
        gating,
        no_candidate="GEPA found no candidate other than production",
    )
    return GepaOutcome(
        current=current,
        best=best,
        changed_roles=changed,
        decision=comparison.decision,
        metric_calls=metric_calls,
        candidates=len(result.candidates),
        validation_best=result.val_aggregate_scores[result.best_idx],
        validation_seed=result.val_aggregate_scores[0],
        seconds=time.perf_counter() - started,
    )
