"""The alert processor's logic, free of Kafka: an agent's alert state and one observation in,
the new state and the :class:`~schemas.alerts.Alert` events to publish out.

Three kinds, each an episode that goes ``firing`` then ``resolved``:

* **reward_drop** (per agent). The agent's traces, oldest first, in two windows: the
  ``recent_window`` latest, and before them a baseline of up to ``baseline_window``. Each trace
  counts once, with the reward of its latest revision (human feedback re-scores a trace: its new
  revision replaces the old reward where the trace sits, it is not a new trace). The recent
  level is the recent window's **median** (compared with the baseline's median: like with
  like, and one wild reward moves neither). The robust scale is ``1.4826 x MAD`` of the
  baseline (the normal sigma); when the MAD is 0 (more than half the baseline shares one value)
  the mean absolute deviation from the median x 1.2533 stands in (Iglewicz and Hoaglin's
  modified z-score), and never less than ``mad_floor``. The condition is
  ``recent median < baseline median - k x scale``, judged once the baseline holds
  ``min_baseline`` traces and the recent window is full. Known limit: after a backlog (a
  worker catching up) that brings many traces before their feedback, the windows fill with
  the judges' rewards first, and a drop that users' feedback shows on traces already past the
  recent window lands in the baseline and may not fire. While the condition holds or fires,
  the baseline is frozen (traces leaving the recent window are not added to it), so a lasting
  drop does not become the new normal and keeps firing until the reward comes back.
* **agreement_below_floor** (per agent). Over the latest ``window`` traces with both a judges'
  score and a human signal (``ScoredTrace.human_score``): the share where the judges' verdict
  (their weighted score, the reward the trace would have without the human, at or above
  ``threshold``) equals the human's (the human signal at or above ``threshold``). The final
  reward is not used: it is 70% human by default, so it would agree with people by
  construction. Condition: the share is below ``floor``, once ``min_traces`` are in the window.
* **dead_letter_rate** (every agent at once, ``agent_id`` ``*``: an undecodable event has no
  agent). The reward stream tallies, per batch, the events it handled and the dead letters it
  made (undecodable, invalid, failed, orphaned feedback); over the latest ``window`` events
  the rate is dead letters per event. Condition: the rate is above ``max_rate``, once the
  window holds ``min_events``. Dead letters made by the sink or the side processors are not
  counted (the reward worker does not see them).

Guarantees: an alert fires after its condition held at ``min_traces`` (``sustain``)
observations in a row, and resolves after it was clear as often. An observation is a new trace
or a new revision of one in the windows (feedback re-scores a trace after its judges did, often
in a later batch: the drop users cause shows in the revisions), or a tally; no second ``firing`` is
sent while an episode fires, and every ``resolved`` carries its episode's ``alert_id`` and
``fired_at``. Rewards that are not finite or outside [0, 1] are ignored (nothing else in the
state changes), as are replays (a revision not newer than the one held) and later revisions
of traces no longer in the windows. Never raises on an observation; state is bounded by the
windows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from itertools import repeat
from operator import itemgetter, sub
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from schemas.alerts import Alert, AlertKind
from schemas.models import new_id, utcnow
from streams.alerts_config import AlertsConfig

ALL_AGENTS = "*"  # the key and agent_id of alerts over every agent
MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD x this estimates a normal sigma
MEANAD_TO_SIGMA = 1.2533  # sqrt(pi / 2): the same for the mean absolute deviation


class TraceSeen(NamedTuple):
    """A scored trace as the alert processor sees it (from the reward stream)."""

    agent_id: str
    trace_id: str
    revision: int
    reward: float
    judge_score: float | None = None  # the judges' weighted score, no human in it
    human_score: float | None = None  # the human signal, None without feedback


class DeadLetterTally(NamedTuple):
    """Events one batch of the reward stream handled, and dead letters it made (its expiry
    pass dead-letters orphaned feedback with no new event)."""

    events: int
    dead_letters: int


Observation = TraceSeen | DeadLetterTally


def observation_bytes(seen: Observation) -> bytes:
    """The internal topic's value: JSON, ``["t", trace, revision, reward, judges, human]`` or
    ``["d", events, dead_letters]``; the key is the agent (``*`` for a tally)."""
    if isinstance(seen, TraceSeen):
        return json.dumps(["t", *seen[1:]]).encode()
    return json.dumps(["d", *seen]).encode()


def observation_of(key: bytes, value: bytes) -> Observation:
    """ValueError if the message is not an observation (its numbers may still be NaN or out of
    range: the detector ignores those)."""
    try:
        kind, *rest = json.loads(value)
        if kind == "d":
            events, dead = rest
            tally = DeadLetterTally(int(events), int(dead))
            if tally.events < 0 or tally.dead_letters < 0:
                raise ValueError("counts out of range")
            return tally
        if kind != "t":
            raise ValueError(f"unknown kind {kind!r}")
        trace_id, revision, reward, judges, human = rest
        seen = TraceSeen(
            key.decode(),
            str(trace_id),
            int(revision),
            float(reward),
            None if judges is None else float(judges),
            None if human is None else float(human),
        )
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not an alert observation: {value[:80]!r} ({exc})") from None
    if not seen.agent_id or not seen.trace_id or seen.revision < 1:
        raise ValueError(f"not an alert observation: {key[:80]!r} {value[:80]!r}")
    return seen


class Episode(BaseModel):
    """One kind's alert: whether it fires, and how many counted steps in a row went against
    that (toward changing it)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    firing: bool = False
    streak: int = Field(0, ge=0)
    alert_id: str | None = None
    fired_at: datetime | None = None


class AlertState(BaseModel):
    """One key's state in the changelog-backed table: an agent's windows and episodes, or
    (key ``*``) the dead-letter tallies."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # (trace_id, revision, reward), oldest first
    recent: list[tuple[str, int, float]] = Field(default_factory=list)
    baseline: list[tuple[str, int, float]] = Field(default_factory=list)
    # (trace_id, revision, judges and human agree)
    agreement: list[tuple[str, int, bool]] = Field(default_factory=list)
    tallies: list[tuple[int, int]] = Field(default_factory=list)
    episodes: dict[str, Episode] = Field(default_factory=dict)

    def snapshot(self) -> AlertState:
        """A copy that later changes to this state do not touch (cheaper than a deep copy)."""
        return AlertState.model_construct(
            recent=list(self.recent),
            baseline=list(self.baseline),
            agreement=list(self.agreement),
            tallies=list(self.tallies),
            episodes={k: e.model_copy() for k, e in self.episodes.items()},
        )


class Figures(NamedTuple):
    breach: bool
    baseline_median: float | None
    mad: float | None
    recent_value: float
    threshold: float
    count: int
    message: str


def sorted_median(ordered: Sequence[float]) -> float:
    """The median of values already in ascending order (``statistics.median`` less its sort)."""
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def robust_scale(values: Sequence[float], floor: float) -> tuple[float, float, float]:
    """(median, MAD, scale) of ``values``: scale is 1.4826 x MAD, or when that is 0 1.2533 x
    the mean absolute deviation from the median, and at least ``floor``. Every pass over the
    values runs in C (this runs once per observed trace, over the whole baseline)."""
    ordered = sorted(values)
    median = sorted_median(ordered)
    deviations = sorted(map(abs, map(sub, ordered, repeat(median))))
    mad = sorted_median(deviations)
    if mad > 0:
        scale = MAD_TO_SIGMA * mad
    else:
        scale = MEANAD_TO_SIGMA * math.fsum(deviations) / len(deviations)
    return median, mad, max(scale, floor)


def _position(
    window: list[tuple[str, int, float]] | list[tuple[str, int, bool]], trace_id: str
) -> int | None:
    """Where ``trace_id`` sits in a window of (trace_id, revision, value), None if absent."""
    try:
        return list(map(itemgetter(0), window)).index(trace_id)
    except ValueError:
        return None


REWARD = itemgetter(2)  # of a window's (trace_id, revision, reward)


class AlertDetector:
    def __init__(self, config: AlertsConfig):
        self.config = config

    # -- reward_drop -------------------------------------------------------------------------

    def _drop(self, agent: str, state: AlertState) -> Figures | None:
        config = self.config.reward_drop
        if len(state.baseline) < config.min_baseline or len(state.recent) < config.recent_window:
            return None
        median, mad, scale = robust_scale(list(map(REWARD, state.baseline)), config.mad_floor)
        recent = sorted_median(sorted(map(REWARD, state.recent)))
        threshold = median - config.k * scale
        return Figures(
            recent < threshold,
            median,
            mad,
            recent,
            threshold,
            len(state.recent),
            f"reward of {agent}: median {recent:.3f} of the last {len(state.recent)} traces"
            f" against {median:.3f} over the {len(state.baseline)} before them (MAD {mad:.3f});"
            f" alert below {threshold:.3f} = median - {config.k:g} x scale {scale:.3f}",
        )

    def _place(self, state: AlertState, seen: TraceSeen) -> bool | None:
        """Put the trace's reward in the windows: True for a new trace, False for a newer
        revision of one held, None if ignored."""
        for window in (state.recent, state.baseline):
            i = _position(window, seen.trace_id)
            if i is not None:
                if seen.revision <= window[i][1]:
                    return None  # a replay
                window[i] = (seen.trace_id, seen.revision, seen.reward)
                return False
        if seen.revision > 1:
            return None  # a re-score of a trace older than the windows (or of one not seen)
        state.recent.append((seen.trace_id, seen.revision, seen.reward))
        config = self.config.reward_drop
        episode = state.episodes.get("reward_drop")
        frozen = episode is not None and (episode.firing or episode.streak > 0)
        while len(state.recent) > config.recent_window:
            oldest = state.recent.pop(0)
            if not frozen:
                state.baseline.append(oldest)
        del state.baseline[: max(0, len(state.baseline) - config.baseline_window)]
        return True

    # -- agreement_below_floor ---------------------------------------------------------------

    def _agree(self, state: AlertState, seen: TraceSeen) -> bool | None:
        """Record whether judges and human agree on the trace: True if it is new in the
        window, False if it replaced its earlier revision, None if nothing to record."""
        config = self.config.agreement
        if seen.judge_score is None or seen.human_score is None:
            return None
        if not all(math.isfinite(v) for v in (seen.judge_score, seen.human_score)):
            return None
        agree = (seen.judge_score >= config.threshold) == (seen.human_score >= config.threshold)
        i = _position(state.agreement, seen.trace_id)
        if i is not None:
            if seen.revision <= state.agreement[i][1]:
                return None
            state.agreement[i] = (seen.trace_id, seen.revision, agree)
            return False
        state.agreement.append((seen.trace_id, seen.revision, agree))
        del state.agreement[: max(0, len(state.agreement) - config.window)]
        return True

    def _agreement(self, agent: str, state: AlertState) -> Figures | None:
        config = self.config.agreement
        if len(state.agreement) < config.min_traces:
            return None
        share = sum(agree for *_, agree in state.agreement) / len(state.agreement)
        return Figures(
            share < config.floor,
            None,
            None,
            share,
            config.floor,
            len(state.agreement),
            f"judges of {agent} agree with people on {share:.0%} of the last"
            f" {len(state.agreement)} traces with feedback (pass: score >= {config.threshold:g});"
            f" alert below {config.floor:.0%}",
        )

    # -- dead_letter_rate --------------------------------------------------------------------

    def _dead_letters(self, state: AlertState) -> Figures | None:
        config = self.config.dead_letters
        events = sum(e for e, _ in state.tallies)
        dead = sum(d for _, d in state.tallies)
        if events < config.min_events:
            return None
        rate = min(1.0, dead / events)  # orphaned feedback is dead-lettered after its event
        return Figures(
            rate > config.max_rate,
            None,
            None,
            rate,
            config.max_rate,
            events,
            f"the reward stream dead-lettered {dead} of its last {events} events ({rate:.1%});"
            f" alert above {config.max_rate:.1%}",
        )

    # -- episodes ----------------------------------------------------------------------------

    def _step(
        self,
        state: AlertState,
        agent: str,
        kind: AlertKind,
        figures: Figures | None,
        counted: bool,
        needed: int,
        now: datetime,
    ) -> Alert | None:
        """Move the kind's episode on by one observation; the alert event if it changed."""
        episode = state.episodes.setdefault(kind, Episode())
        if figures is None or figures.breach == episode.firing:
            episode.streak = 0
            return None
        episode.streak += counted
        if episode.streak < needed:
            return None
        episode.streak = 0
        episode.firing = not episode.firing
        if episode.firing:
            episode.alert_id, episode.fired_at = new_id(), now
        alert = Alert(
            alert_id=episode.alert_id or new_id(),
            agent_id=agent,
            kind=kind,
            state="firing" if episode.firing else "resolved",
            fired_at=episode.fired_at or now,
            updated_at=now,
            baseline_median=figures.baseline_median,
            mad=figures.mad,
            recent_value=figures.recent_value,
            threshold=figures.threshold,
            count=figures.count,
            message=figures.message if episode.firing else f"resolved: {figures.message}",
        )
        if not episode.firing:
            episode.alert_id, episode.fired_at = None, None
        return alert

    def observe(
        self, state: AlertState, seen: Observation, now: datetime | None = None
    ) -> tuple[AlertState, list[Alert], str]:
        """The key's state moved on by ``seen`` (changed in place and returned), the alerts
        that changed state, and what happened, for a log line."""
        now = now or utcnow()
        config = self.config
        alerts: list[Alert | None] = []
        if isinstance(seen, DeadLetterTally):
            if not config.dead_letters.enabled or seen == (0, 0):
                return state, [], "empty tally"
            state.tallies.append((seen.events, seen.dead_letters))
            while state.tallies and sum(e for e, _ in state.tallies[1:]) >= (
                config.dead_letters.window
            ):
                state.tallies.pop(0)
            figures = self._dead_letters(state)
            needed = config.dead_letters.sustain
            alerts.append(
                self._step(state, ALL_AGENTS, "dead_letter_rate", figures, True, needed, now)
            )
            return state, [a for a in alerts if a], "tally"
        if not (math.isfinite(seen.reward) and 0.0 <= seen.reward <= 1.0):
            return state, [], f"reward {seen.reward!r} ignored: not a number in [0, 1]"
        if config.reward_drop.enabled:
            placed = self._place(state, seen)
            if placed is not None:
                figures = self._drop(seen.agent_id, state)
                needed = config.reward_drop.min_traces
                alerts.append(
                    self._step(state, seen.agent_id, "reward_drop", figures, True, needed, now)
                )
        if config.agreement.enabled:
            added = self._agree(state, seen)
            if added is not None:
                figures = self._agreement(seen.agent_id, state)
                needed = config.agreement.sustain
                kind: AlertKind = "agreement_below_floor"
                alerts.append(self._step(state, seen.agent_id, kind, figures, True, needed, now))
        return state, [a for a in alerts if a], "trace"
