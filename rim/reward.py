"""RIM: judges and human feedback turned into one dense reward in [0, 1].

``Rim.score(trace, feedback)`` runs every judge, takes the weighted mean of the judges that
scored, and merges the human signal (approve 1, reject 0, edit: similarity of the answer to
the user's edit, rating: normalised, tool outcome: success rate) with ``human_weight``: by
default a person outranks the judges. ``score_many`` gives each judge the whole batch at once,
so LLM judges cost one batched call per sampling temperature instead of one per trace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from rim.calibration import Calibration, weighted
from rim.judges import Judge, text_similarity
from schemas.models import FeedbackEvent, InteractionEvent, JudgeScore

AnswerField = Literal["baseline_answer", "production_answer"]


class RewardWeights(BaseModel):
    judges: dict[str, float] = Field(
        default_factory=dict, description="Weight per judge name; unlisted judges weigh 1."
    )
    human_weight: float = Field(
        0.7, ge=0, le=1, description="Share of the final reward taken by human feedback."
    )


@dataclass
class Reward:
    score: float
    judge_scores: list[JudgeScore]
    rationale: str
    uncertainty: float
    escalated: bool
    human_score: float | None = None
    judge_score: float | None = None
    errors: list[str] = field(default_factory=list)


def human_signal(answer: str, feedback: Sequence[FeedbackEvent]) -> float | None:
    """The mean of the per-event signals, or None without feedback. A rating whose range is
    not finite and positive carries no signal (it would divide infinities)."""
    signals: list[float] = []
    tool_outcomes: list[bool] = []
    for event in feedback:
        if event.kind == "approve":
            signals.append(1.0)
        elif event.kind == "reject":
            signals.append(0.0)
        elif event.kind == "edit" and event.edited_text is not None:
            signals.append(text_similarity(answer, event.edited_text))
        elif event.kind == "rating" and event.rating is not None:
            span = event.rating_max - event.rating_min
            value = (event.rating - event.rating_min) / span if span > 0 else 0.0
            if math.isfinite(value):
                signals.append(min(max(value, 0.0), 1.0))
        elif event.kind == "tool_outcome" and event.tool_success is not None:
            tool_outcomes.append(event.tool_success)
    if tool_outcomes:
        signals.append(sum(tool_outcomes) / len(tool_outcomes))
    return sum(signals) / len(signals) if signals else None


class Rim:
    def __init__(self, judges: Sequence[Judge], weights: RewardWeights | None = None):
        if not judges:
            raise ValueError("RIM needs at least one judge")
        names = [j.name for j in judges]
        if len(set(names)) != len(names):
            raise ValueError(f"judge names must be unique: {names}")
        self.judges = list(judges)
        self.weights = weights or RewardWeights()

    def judge_many(self, traces: Sequence[InteractionEvent]) -> list[list[JudgeScore]]:
        """Every judge over the batch; a judge that raises yields an error score, not a crash."""
        per_judge = []
        for judge in self.judges:
            try:
                per_judge.append(judge.judge(traces))
            except Exception as exc:  # a broken judge must not stop the stream
                message = f"{type(exc).__name__}: {exc}"
                per_judge.append([JudgeScore(judge=judge.name, error=message)] * len(traces))
        return [list(scores) for scores in zip(*per_judge, strict=True)]

    def combine(
        self,
        trace: InteractionEvent,
        judge_scores: list[JudgeScore],
        feedback: Sequence[FeedbackEvent] = (),
        calibration: Calibration | None = None,
    ) -> Reward:
        """The reward from already computed judge scores plus the human signal: re-scoring a
        trace when feedback arrives does not call the judges again. A ``calibration``
        replaces the configured weights and maps the judges' score before the human's is
        merged (``rim/calibration.py``)."""
        scored, non_finite = _split_finite(judge_scores)
        errors = [f"{s.judge}: {s.error}" for s in judge_scores if s.error]
        errors += [f"{s.judge}: non-finite score ignored" for s in non_finite]
        judge_score = self._weighted_mean(scored, calibration)
        human = human_signal(trace.final_answer, feedback)
        if human is not None and judge_score is not None:
            final = (
                self.weights.human_weight * human + (1 - self.weights.human_weight) * judge_score
            )
        elif human is not None:
            final = human
        elif judge_score is not None:
            final = judge_score
        else:
            final = 0.0
            errors.append("no judge scored and no human feedback")
        if not math.isfinite(final):  # unreachable with finite inputs; never publish a NaN
            errors.append(f"non-finite reward {final} replaced by 0")
            final = 0.0
        uncertainties = [s.uncertainty for s in scored if s.uncertainty is not None]
        rationale = "; ".join(f"{s.judge}: {s.rationale}" for s in scored if s.rationale)
        if human is not None:
            rationale = f"human {human:.2f} ({len(feedback)} feedback); {rationale}"
        return Reward(
            score=min(max(final, 0.0), 1.0),
            judge_scores=judge_scores,
            rationale=rationale,
            uncertainty=max(uncertainties) if uncertainties else 0.0,
            escalated=any(s.escalated for s in judge_scores),
            human_score=human,
            judge_score=judge_score,
            errors=errors,
        )

    def judge_score(
        self, judge_scores: Sequence[JudgeScore], calibration: Calibration | None = None
    ) -> float | None:
        """The judges' weighted mean over their finite scores (under ``calibration``, mapped);
        None if there is none."""
        return self._weighted_mean(_split_finite(judge_scores)[0], calibration)

    def _weighted_mean(
        self, scored: Sequence[JudgeScore], calibration: Calibration | None = None
    ) -> float | None:
        """`judge_score` over finite scores only (`combine` has split them already), with the
        configured weights or the ``calibration``'s (then mapped)."""
        scores = {s.judge: s.score for s in scored if s.score is not None}
        if calibration is None:
            return weighted(scores, self.weights.judges, 1.0)
        mean = weighted(scores, calibration.weights, 0.0)
        return None if mean is None else calibration.mapped(mean)

    def score(self, trace: InteractionEvent, feedback: Sequence[FeedbackEvent] = ()) -> Reward:
        return self.score_many([trace], [feedback])[0]

    def score_many(
        self,
        traces: Sequence[InteractionEvent],
        feedback: Sequence[Sequence[FeedbackEvent]] | None = None,
    ) -> list[Reward]:
        feedback = feedback or [()] * len(traces)
        judged = self.judge_many(traces)
        return [
            self.combine(trace, scores, events)
            for trace, scores, events in zip(traces, judged, feedback, strict=True)
        ]

    def baseline_rewards(
        self, traces: Sequence[InteractionEvent], answer: AnswerField = "baseline_answer"
    ) -> list[float | None]:
        """The judge score each trace's ``answer`` would have earned as its final answer: the
        student's un-taught answer (``baseline_answer``), or production's shadow answer on a
        canary task (``production_answer``). From the judges that need no model, so measuring
        non-degradation costs no model calls. None where there is no such answer or no
        programmatic judge."""
        judges = [j for j in self.judges if getattr(j, "programmatic", False)]
        answers = [getattr(t, answer) for t in traces]
        with_answer = [(t, a) for t, a in zip(traces, answers, strict=True) if a is not None]
        if not judges or not with_answer:
            return [None] * len(traces)
        rewrites = [t.model_copy(update={"final_answer": a}) for t, a in with_answer]
        scores = iter(Rim(judges, self.weights).judge_many(rewrites))
        return [self.judge_score(next(scores)) if a is not None else None for a in answers]


def _split_finite(
    judge_scores: Sequence[JudgeScore],
) -> tuple[list[JudgeScore], list[JudgeScore]]:
    """The scores with a finite value and those with NaN or infinity, in order; a score
    without a value (the judge failed) is in neither."""
    finite: list[JudgeScore] = []
    non_finite: list[JudgeScore] = []
    for s in judge_scores:
        if s.score is not None:
            (finite if math.isfinite(s.score) else non_finite).append(s)
    return finite, non_finite
