"""Fitting a RIM calibration to what people said: judge weights and a monotone score map, and
the judges-vs-humans agreement figures the gate compares (``trainer.evaluation.agreement_gate``).

The data are labelled traces: each trace's finite judge scores and its human score (the signal
of all its feedback, ``rim.reward.human_signal``). The fit minimises the squared error between
the calibrated judge score and the human score on the train split:

* weights: coordinate search on the simplex (each judge's weight tried on a grid, the others
  rescaled; repeated until no move helps), starting from the current weights. It keeps the
  reward's exact rule (a weighted mean over the judges that scored), so a judge that did not
  score a trace is left out of it, as in the stream; no solver library is needed;
* the map (optional): isotonic regression (pool adjacent violators) of the human score on the
  weighted score, stored as at most ``max_knots`` knots of a piecewise-linear map.

The held-out split is chosen by a hash of the trace id, so a trace is in one split only and the
same window always splits the same way.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from rim.calibration import Calibration, weighted
from schemas.configfile import load_config
from trainer.evaluation import AgreementGateConfig, agreement_gate
from trainer.overrides import with_params


class CalibrationConfig(BaseModel):
    """``configs/calibration.yaml``: how `atlas retrain rim` fits and gates a calibration."""

    heldout_share: float = Field(0.3, gt=0, lt=1, description="Share of traces held out.")
    min_train: int = Field(20, ge=2, description="Fewest labelled traces to fit on.")
    min_heldout: int = Field(10, ge=2, description="Fewest labelled traces to gate on.")
    max_traces: int = Field(
        100_000, ge=4, le=10_000_000, description="The window's newest traces read, at most."
    )
    threshold: float = Field(0.5, ge=0, le=1, description="Pass/fail cut for kappa, confusion.")
    monotone_map: bool = Field(True, description="Also fit an isotonic map of the score.")
    max_knots: int = Field(32, ge=2, le=256)
    weight_grid: int = Field(20, ge=2, le=200, description="Steps per weight in the search.")
    max_rounds: int = Field(20, ge=1, le=1000)
    gate: AgreementGateConfig = Field(default_factory=AgreementGateConfig)

    def with_overrides(self, budget: int | None, params: Mapping[str, str]) -> CalibrationConfig:
        """This config with a trigger's budget (search rounds) and params (``gate.margin``
        nests), validated (ValueError naming the knob otherwise)."""
        return with_params(self, params, "calibration", "max_rounds", budget)


def load_calibration_config(config_dir: Path) -> CalibrationConfig:
    return load_config(config_dir / "calibration.yaml", CalibrationConfig)


@dataclass(frozen=True)
class Labelled:
    """One trace a person gave feedback on: its judges' scores and the human score."""

    trace_id: str
    judge_scores: dict[str, float]
    human: float


@dataclass(frozen=True)
class Agreement:
    """Machine scores against human scores: the figures of ``store/sql/human_agreement.sql``."""

    n: int
    spearman: float | None
    kappa: float | None
    mae: float
    tp: int
    fp: int
    fn: int
    tn: int

    def metrics(self, prefix: str) -> dict[str, float]:
        figures = {"n": float(self.n), "mae": self.mae, "spearman": self.spearman}
        figures["kappa"] = self.kappa
        return {f"{prefix}_{k}": v for k, v in figures.items() if v is not None}


def _mean_ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # tied values share their mean rank
        i = j + 1
    return ranks


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def agreement(machine: Sequence[float], human: Sequence[float], threshold: float) -> Agreement:
    """n, Spearman (Pearson of mean ranks; None when n < 2 or a side is constant), Cohen's
    kappa at ``threshold`` (positive: score >= threshold; None when chance agreement is 1),
    MAE and the confusion. ValueError for empty or unequal inputs."""
    if not machine or len(machine) != len(human):
        raise ValueError("agreement needs the same, non-empty machine and human scores")
    n = len(machine)
    pairs = [(m >= threshold, h >= threshold) for m, h in zip(machine, human, strict=True)]
    tp = sum(m and h for m, h in pairs)
    fp = sum(m and not h for m, h in pairs)
    fn = sum(h and not m for m, h in pairs)
    tn = n - tp - fp - fn
    chance = (tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)
    kappa = None if chance == n * n else (n * (tp + tn) - chance) / (n * n - chance)
    spearman = _pearson(_mean_ranks(machine), _mean_ranks(human)) if n >= 2 else None
    mae = sum(abs(m - h) for m, h in zip(machine, human, strict=True)) / n
    return Agreement(n, spearman, kappa, mae, tp, fp, fn, tn)


def split(
    traces: Sequence[Labelled], heldout_share: float
) -> tuple[list[Labelled], list[Labelled]]:
    """(train, held-out) by a hash of each trace id: stable, and no trace in both."""
    train: list[Labelled] = []
    heldout: list[Labelled] = []
    for trace in traces:
        bucket = int.from_bytes(hashlib.sha256(trace.trace_id.encode()).digest()[:8], "big")
        (heldout if bucket / 2**64 < heldout_share else train).append(trace)
    return train, heldout


def machine_scores(traces: Sequence[Labelled], calibration: Calibration) -> list[float]:
    """Each trace's calibrated judge score; 0 where no weighted judge scored it, as the
    stream's reward is then (``rim.reward.Rim.combine``)."""
    out: list[float] = []
    for trace in traces:
        mean = weighted(trace.judge_scores, calibration.weights, 0.0)
        out.append(0.0 if mean is None else calibration.mapped(mean))
    return out


def _loss(traces: Sequence[Labelled], weights: dict[str, float]) -> float:
    """Mean squared error of the weighted score against the human; a trace no weighted
    judge scored counts as a miss (scored 0), so no weighting wins by ignoring traces."""
    total = 0.0
    for trace in traces:
        mean = weighted(trace.judge_scores, weights, 0.0)
        total += (trace.human - (0.0 if mean is None else mean)) ** 2
    return total / len(traces)


def fit_weights(
    traces: Sequence[Labelled], start: dict[str, float], grid: int = 20, max_rounds: int = 20
) -> dict[str, float]:
    """Weights (summing to 1) over the judges in ``start`` that lower the squared error on
    ``traces``, by coordinate search from ``start`` (normalised). ValueError without traces
    or without a positive starting weight."""
    if not traces:
        raise ValueError("no labelled traces to fit weights on")
    total = sum(start.values())
    if total <= 0 or not math.isfinite(total):
        raise ValueError("the starting weights must have a positive, finite sum")
    weights = {judge: w / total for judge, w in start.items()}
    best = _loss(traces, weights)
    for _ in range(max_rounds):
        improved = False
        for judge in weights:
            for step in range(grid + 1):
                trial = _with_weight(weights, judge, step / grid)
                if trial is not None and (loss := _loss(traces, trial)) < best - 1e-12:
                    weights, best, improved = trial, loss, True
        if not improved:
            break
    return {judge: round(w, 6) for judge, w in weights.items()}


def _with_weight(weights: dict[str, float], judge: str, value: float) -> dict[str, float] | None:
    """``weights`` with ``judge`` at ``value`` and the others rescaled to sum to 1 with it."""
    rest = sum(w for j, w in weights.items() if j != judge)
    if rest <= 0:
        return None if value < 1 else {j: float(j == judge) for j in weights}
    scale = (1 - value) / rest
    return {j: value if j == judge else w * scale for j, w in weights.items()}


def isotonic_knots(
    xs: Sequence[float], ys: Sequence[float], max_knots: int = 32
) -> list[tuple[float, float]]:
    """The isotonic (non-decreasing) least-squares fit of ``ys`` on ``xs`` by pool adjacent
    violators, as knots of a piecewise-linear map: one per pooled block at its mean x, thinned
    to ``max_knots``. Empty when fewer than two distinct x values remain (no map)."""
    by_x: dict[float, list[float]] = {}
    for x, y in zip(xs, ys, strict=True):
        by_x.setdefault(x, []).append(y)
    blocks: list[list[float]] = []  # [sum_x, sum_y, count]; equal xs start as one block
    for x in sorted(by_x):
        blocks.append([x * len(by_x[x]), sum(by_x[x]), float(len(by_x[x]))])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            sx, sy, c = blocks.pop()
            blocks[-1][0] += sx
            blocks[-1][1] += sy
            blocks[-1][2] += c
    knots = [(sx / c, min(max(sy / c, 0.0), 1.0)) for sx, sy, c in blocks]
    if len(knots) > max_knots:
        step = (len(knots) - 1) / (max_knots - 1)
        knots = [knots[round(i * step)] for i in range(max_knots)]
    return knots if len(knots) >= 2 else []


def fit_calibration(
    train: Sequence[Labelled], start: dict[str, float], config: CalibrationConfig
) -> Calibration:
    """Weights, then (if ``config.monotone_map``) the isotonic map on the weighted score."""
    weights = fit_weights(train, start, config.weight_grid, config.max_rounds)
    calibration = Calibration(weights=weights)
    if not config.monotone_map:
        return calibration
    scores = machine_scores(train, calibration)
    knots = isotonic_knots(scores, [t.human for t in train], config.max_knots)
    return Calibration(weights=weights, score_map=knots)


@dataclass(frozen=True)
class CalibrationOutcome:
    """What a calibration job ends with: ``state`` FAILED (too few usable traces), REJECTED
    (the gate refused) or SUCCEEDED (``candidate`` may be published), a reason with the
    figures, the job's metrics, and held-out agreement before and after (None when FAILED)."""

    state: str
    reason: str
    metrics: dict[str, float]
    candidate: Calibration | None = None
    before: Agreement | None = None
    after: Agreement | None = None


def calibrate(
    traces: Sequence[Labelled], current: Calibration, config: CalibrationConfig
) -> CalibrationOutcome:
    """Split ``traces`` (those with a non-finite score are left out and counted), fit a
    calibration on train starting from ``current`` (over every judge seen), and gate it against
    ``current`` on the held-out traces (``trainer.evaluation.agreement_gate``)."""
    usable = [
        t
        for t in traces
        if math.isfinite(t.human) and all(math.isfinite(s) for s in t.judge_scores.values())
    ]
    train, heldout = split(usable, config.heldout_share)
    counts = {"labelled_traces": float(len(traces)), "usable_traces": float(len(usable))}
    if len(train) < config.min_train or len(heldout) < config.min_heldout:
        return CalibrationOutcome(
            "FAILED",
            f"{len(usable)} usable of {len(traces)} labelled traces ({len(train)} train /"
            f" {len(heldout)} held out; need {config.min_train} / {config.min_heldout})",
            counts,
        )
    judges = {j for t in usable for j in t.judge_scores} | set(current.weights)
    start = {j: current.weights.get(j, 0.0) for j in sorted(judges)}
    candidate = fit_calibration(train, start, config)
    humans = [t.human for t in heldout]
    before = agreement(machine_scores(heldout, current), humans, config.threshold)
    after = agreement(machine_scores(heldout, candidate), humans, config.threshold)
    passed, reason = agreement_gate(
        (before.mae, before.kappa), (after.mae, after.kappa), len(heldout), config.gate
    )
    metrics = {
        **counts,
        "train_traces": float(len(train)),
        **before.metrics("heldout_current"),
        **after.metrics("heldout_candidate"),
    }
    state = "SUCCEEDED" if passed else "REJECTED"
    return CalibrationOutcome(state, reason, metrics, candidate, before, after)
