"""A calibration of RIM: the ensemble's judge weights and a monotone map of its score, fitted on
traces that people gave feedback on (``trainer/calibration.py``) and published as a version of
the agent's ``rim`` role on ``atlas.prompts.v1`` (signed by the learner, like prompts).

Version 0 of every agent is ``configs/rim.yaml`` as it is. A published version ``n`` holds a
:class:`Calibration` as JSON in the version's text; the reward stream applies it to the agent's
traces and records ``n`` in every ScoredTrace (``rim_version``). Judges themselves are never
changed: a calibration only re-weighs and re-maps what they say, so it costs no model call.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from itertools import pairwise

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

RIM_ROLE = "rim"  # the role calibrations are published under on the prompts topic
MAX_KNOTS = 256


class Calibration(BaseModel):
    """Weights per judge name (unlisted judges weigh 0) and ``score_map``: knots (x, y) of a
    non-decreasing piecewise-linear map of the judges' weighted score into [0, 1], applied
    before the human signal is merged; no knots is the identity."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    weights: dict[str, float] = Field(min_length=1)
    score_map: list[tuple[float, float]] = Field(default_factory=list, max_length=MAX_KNOTS)

    @model_validator(mode="after")
    def _sound(self) -> Calibration:
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        xs = [x for x, _ in self.score_map]
        ys = [y for _, y in self.score_map]
        if any(not 0.0 <= v <= 1.0 for v in xs + ys):
            raise ValueError("score_map knots must lie in [0, 1]")
        if any(b <= a for a, b in pairwise(xs)) or any(b < a for a, b in pairwise(ys)):
            raise ValueError("score_map must be increasing in x and non-decreasing in y")
        return self

    def mapped(self, score: float) -> float:
        """``score`` through the map (linear between knots, flat beyond the ends)."""
        if not self.score_map:
            return score
        xs = [x for x, _ in self.score_map]
        i = bisect.bisect_right(xs, score)
        if i == 0:
            return self.score_map[0][1]
        if i == len(xs):
            return self.score_map[-1][1]
        (x0, y0), (x1, y1) = self.score_map[i - 1], self.score_map[i]
        return y0 + (y1 - y0) * (score - x0) / (x1 - x0)

    def to_text(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_text(cls, text: str) -> Calibration:
        """The calibration a version's text holds; ValueError with one readable line if not."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "text"
            raise ValueError(f"not a RIM calibration: {where}: {first['msg']}") from None


@dataclass(frozen=True)
class RimVersion:
    """The RIM configuration a trace is scored with: 0 and no calibration is the configured
    one; ``n`` and its calibration a published version."""

    version: int = 0
    calibration: Calibration | None = None


CONFIGURED = RimVersion()


def weighted(scores: dict[str, float], weights: dict[str, float], default: float) -> float | None:
    """The weighted mean of the finite ``scores`` (judge -> score), a judge missing from
    ``weights`` weighing ``default``; None when no weight is left (no judge scored)."""
    pairs = [(weights.get(j, default), s) for j, s in scores.items() if math.isfinite(s)]
    total = sum(w for w, _ in pairs)
    if not pairs or total <= 0 or not math.isfinite(total):
        return None
    return sum(w * s for w, s in pairs) / total
