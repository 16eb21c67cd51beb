"""Judges vs humans (`store/sql/human_agreement.sql`, `atlas monitor --threshold`): known
traces with judge scores and human scores, some of whose feedback came as a later revision,
and the figures worked out by hand. Both store modes, as in test_store."""

from __future__ import annotations

import math
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from typer.testing import CliRunner

from atlas.cli import app
from schemas.models import JudgeScore, ScoredTrace
from store.monitoring import monitor
from store.writer import StoreWriter
from tests.factories import interaction, scored

AGENT = "agent-h"
DAY1 = datetime(2026, 11, 25, 9, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)

# Per trace: agent, creation time, each judge's score (None: the judge failed), then its
# revisions in order as (reward, human_score). Revisions without a human score are the ones
# scored before any feedback; each revision carries the same judge scores, as the stream's are.
Trace = tuple[str, datetime, dict[str, float | None], list[tuple[float, float | None]]]
TRACES: dict[str, Trace] = {
    # feedback after scoring: revision 2 carries it
    "t1": (AGENT, DAY1, {"accuracy": 0.9, "reference_match": None}, [(0.95, None), (0.97, 1.0)]),
    "t2": (AGENT, DAY1, {"accuracy": 0.2, "reference_match": 0.0}, [(0.1, None), (0.03, 0.0)]),
    # re-scored (atlas replay) before its feedback: 'final' is the re-scored reward, 0.45
    "t3": (
        AGENT,
        DAY1,
        {"accuracy": 0.8, "reference_match": 1.0},
        [(0.9, None), (0.45, None), (0.1, 0.0)],
    ),
    # feedback merged before the first scoring: no machine-only reward, so not in 'final'
    "t4": (AGENT, DAY1, {"accuracy": 0.6, "reference_match": 1.0}, [(0.9, 1.0)]),
    # no feedback: in no pair
    "t5": (AGENT, DAY1, {"accuracy": 0.3, "reference_match": 0.0}, [(0.3, None)]),
    # two feedback events: the latest revision's human score (0.5) is the label
    "t6": (
        AGENT,
        DAY1,
        {"accuracy": 0.4, "reference_match": 1.0},
        [(0.7, None), (0.2, 0.0), (0.55, 0.5)],
    ),
    "t7": (AGENT, DAY2, {"accuracy": 0.7, "reference_match": 1.0}, [(0.8, None), (0.95, 1.0)]),
    # another agent's: filtered out by --agent
    "t8": ("agent-other", DAY1, {"accuracy": 0.1}, [(0.1, None), (0.7, 1.0)]),
}

# (day, judge) -> the (machine, human) pairs, worked out from TRACES by hand, and at threshold
# 0.5: MAE, (tp, fp, fn, tn), kappa = (n (tp + tn) - E) / (n^2 - E) with
# E = (tp + fp)(tp + fn) + (fn + tn)(fp + tn).
Expected = tuple[list[tuple[float, float]], float, tuple[int, int, int, int], float | None]
EXPECTED: dict[tuple[str, str], Expected] = {
    # E = 3*3 + 2*2 = 13: (15 - 13) / (25 - 13)
    ("2026-11-25", "accuracy"): (
        [(0.9, 1.0), (0.2, 0.0), (0.8, 0.0), (0.6, 1.0), (0.4, 0.5)],
        (0.1 + 0.2 + 0.8 + 0.4 + 0.1) / 5,
        (2, 1, 1, 1),
        2 / 12,
    ),
    # the reward before feedback: t1 rev 1, t2 rev 1, t3 rev 2, t6 rev 1; E = 2*2 + 2*2 = 8
    ("2026-11-25", "final"): (
        [(0.95, 1.0), (0.1, 0.0), (0.45, 0.0), (0.7, 0.5)],
        (0.05 + 0.1 + 0.45 + 0.2) / 4,
        (2, 0, 0, 2),
        (16 - 8) / (16 - 8),
    ),
    # t1's failed score is left out; E = 3*2 + 1*2 = 8: (12 - 8) / (16 - 8)
    ("2026-11-25", "reference_match"): (
        [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (1.0, 0.5)],
        (0.0 + 1.0 + 0.0 + 0.5) / 4,
        (2, 1, 0, 1),
        4 / 8,
    ),
    # one pair a day: every score on one side, so kappa (and Spearman) are undefined
    ("2026-11-26", "accuracy"): ([(0.7, 1.0)], 0.3, (1, 0, 0, 0), None),
    ("2026-11-26", "final"): ([(0.8, 1.0)], 0.2, (1, 0, 0, 0), None),
    ("2026-11-26", "reference_match"): ([(1.0, 1.0)], 0.0, (1, 0, 0, 0), None),
}


def revisions() -> list[ScoredTrace]:
    rng = random.Random(5)
    out = []
    for agent, at, judges, history in TRACES.values():
        event = interaction(rng, agent_id=agent, at=at)
        scores = [
            JudgeScore(judge=name, score=score, error=None if score is not None else "timeout")
            for name, score in judges.items()
        ]
        for number, (reward, human) in enumerate(history, start=1):
            update = {"reward": reward, "human_score": human, "judge_scores": scores}
            out.append(scored(event, rng, revision=number).model_copy(update=update))
    return out


def spearman(pairs: list[tuple[float, float]]) -> float | None:
    """Pearson's correlation of average ranks; None if undefined."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(values)
        return [order.index(v) + (order.count(v) + 1) / 2 for v in values]

    xs, ys = ranks([m for m, _ in pairs]), ranks([h for _, h in pairs])
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    spread = math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    return cov / spread if spread else None


@pytest.fixture
def labelled(store: Client) -> Client:
    """The store with this module's traces."""
    StoreWriter(store).write(revisions())
    return store


def test_judges_and_the_reward_before_feedback_against_humans_by_day(labelled: Client) -> None:
    rows = monitor(labelled, DAY1 - timedelta(hours=1), AGENT)["human_agreement"]
    got = {(str(r["day"]), r["judge"]): r for r in rows}
    assert list(got) == list(EXPECTED)  # ordered by agent, day, judge; t8's agent left out
    for key, (pairs, mae, confusion, kappa) in EXPECTED.items():
        row = got[key]
        assert row["agent_id"] == AGENT
        assert row["n"] == len(pairs), key
        assert (row["tp"], row["fp"], row["fn"], row["tn"]) == confusion, key
        assert row["mae"] == pytest.approx(mae, abs=1e-12), key
        assert row["kappa"] == (None if kappa is None else pytest.approx(kappa, abs=1e-12)), key
        rho = spearman(pairs)
        assert row["spearman"] == (None if rho is None else pytest.approx(rho, abs=1e-9)), key


def test_ties_are_ranked_by_their_mean_rank(labelled: Client) -> None:
    # human scores are mostly ties (approve 1, reject 0); the no-ties formula ClickHouse's
    # rankCorr uses would give 1 - 6 * 10.5 / 60 = -0.05 for these, not -1/sqrt(18)
    assert spearman([(1, 1), (1, 2), (2, 2), (3, 1)]) == pytest.approx(-1 / math.sqrt(18))
    rows = monitor(labelled, DAY1 - timedelta(hours=1), AGENT)["human_agreement"]
    (accuracy,) = [r for r in rows if r["judge"] == "accuracy" and r["n"] == 5]
    assert accuracy["spearman"] == pytest.approx(4.5 / math.sqrt(90))  # worked by hand


def test_the_threshold_must_be_a_score() -> None:
    for threshold in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="threshold must be between 0 and 1"):
            monitor(None, DAY1, threshold=threshold)  # type: ignore[arg-type]


@pytest.mark.parametrize("store", ["chdb"], indirect=True)
def test_atlas_monitor_shows_judges_vs_humans_at_a_threshold(
    labelled: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The command opens the store its settings name; chdb serves one store per process, so
    # it gets this test's open client for it.
    url = f"chdb://{tmp_path / 'chdb'}"
    opened: list[Any] = []
    monkeypatch.setattr("store.client.connect", lambda target: opened.append(target) or labelled)
    env = {"ATLAS_HOME": str(tmp_path / "home"), "ATLAS_CLICKHOUSE_URL": url, "COLUMNS": "250"}
    chart = tmp_path / "monitor.png"
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["monitor", "--since", "3650d", "--threshold", "0.7", "--plot", str(chart)],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert [str(target) for target in opened] == [url]
    assert "Judges vs humans" in result.output and "pass: score >= 0.7" in result.output
    assert "Inter-judge agreement" in result.output
    # accuracy on day 1 at 0.7: tp t1, fp t3, fn t4, tn t2 and t6; E = 2*2 + 3*3 = 13, so
    # kappa = (5 * 3 - 13) / (25 - 13) = 0.167; MAE 1.6 / 5
    assert re.search(
        r"agent-h\W+2026-11-25\W+accuracy\W+5\W+0\.474\W+0\.167\W+0\.320\W+1/1/1/2", result.output
    ), result.output
    assert re.search(r"agent-other\W+2026-11-25\W+accuracy\W+1\W", result.output)
    assert chart.stat().st_size > 10_000
    bad = runner.invoke(app, ["monitor", "--threshold", "1.5"], env=env)
    assert bad.exit_code == 2 and "--threshold" in bad.output
