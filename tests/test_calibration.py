"""RIM calibration without Kafka: the agreement figures, the fit, the gate, the calibration a
version carries, the reward processor scoring with it, and the follower that reads it (the
end-to-end test on the real stack is tests/test_calibration_e2e.py)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from atlas.settings import PROJECT_CONFIGS
from benchmarks.calibration import simulated_traces
from rim.calibration import RIM_ROLE, Calibration, RimVersion
from rim.config import load_rim_config
from rim.judges import FormatJudge, ReferenceMatchJudge
from rim.reward import Rim
from schemas.codec import AvroCodec
from schemas.models import FeedbackEvent, InteractionEvent, JudgeScore, PromptVersion
from schemas.signing import Verifier, create_keys
from schemas.topics import PROMPTS, key_of
from store.monitoring import labelled_traces, monitor
from store.writer import StoreWriter
from streams.processor import AFTER_REVISION, RESCORE, RIM_VERSION, RewardProcessor
from streams.rim_versions import RimVersions
from tests.fakes import Msg
from trainer.calibration import (
    CalibrationConfig,
    Labelled,
    agreement,
    calibrate,
    fit_weights,
    isotonic_knots,
    load_calibration_config,
    machine_scores,
    split,
)
from trainer.evaluation import AgreementGateConfig, agreement_gate

CONFIG = load_calibration_config(PROJECT_CONFIGS)


# --- agreement -----------------------------------------------------------------------------


def test_agreement_figures_by_hand() -> None:
    machine = [0.9, 0.8, 0.2, 0.6, 0.1]
    human = [1.0, 0.0, 0.0, 1.0, 0.0]
    a = agreement(machine, human, 0.5)
    # confusion at 0.5: tp = {0.9, 0.6}, fp = {0.8}, tn = {0.2, 0.1}
    assert (a.n, a.tp, a.fp, a.fn, a.tn) == (5, 2, 1, 0, 2)
    # kappa: p_o = 4/5, p_e = (3*2 + 2*3) / 25 = 12/25 -> (20 - 12) / (25 - 12)
    assert a.kappa == pytest.approx(8 / 13)
    assert a.mae == pytest.approx((0.1 + 0.8 + 0.2 + 0.4 + 0.1) / 5)
    # ranks: machine 5,4,2,3,1; human (ties share 4.5 and 2) 4.5,2,2,4.5,2
    assert a.spearman == pytest.approx(1 / math.sqrt(3))  # Pearson of those ranks


def test_agreement_is_perfect_or_undefined_where_it_should_be() -> None:
    perfect = agreement([0.0, 0.3, 1.0], [0.0, 0.3, 1.0], 0.5)
    assert (perfect.kappa, perfect.spearman, perfect.mae) == (1.0, pytest.approx(1.0), 0.0)
    constant = agreement([0.9, 0.8], [1.0, 1.0], 0.5)  # every score positive: chance is 1
    assert constant.kappa is None and constant.spearman is None
    with pytest.raises(ValueError, match="non-empty"):
        agreement([], [], 0.5)


# --- the fit -------------------------------------------------------------------------------


def test_isotonic_knots_pool_violators_and_stay_monotone() -> None:
    knots = isotonic_knots([0.1, 0.2, 0.3, 0.3, 0.9], [0.5, 0.1, 0.8, 1.0, 0.7], max_knots=8)
    xs, ys = zip(*knots, strict=True)
    assert list(xs) == sorted(set(xs)) and list(ys) == sorted(ys)
    assert knots[0] == (pytest.approx(0.15), pytest.approx(0.3))  # 0.5 and 0.1 pooled
    assert isotonic_knots([0.4, 0.4], [0.0, 1.0]) == []  # one distinct score: no map
    many = isotonic_knots([i / 100 for i in range(100)], [i / 100 for i in range(100)], 5)
    assert len(many) == 5 and many[0][0] == 0.0 and many[-1][0] == pytest.approx(0.99)


def test_fit_weights_finds_the_judge_people_agree_with() -> None:
    rng = random.Random(4)
    traces = []
    for i in range(200):
        fmt, ref = float(rng.random() < 0.5), float(rng.random() < 0.5)
        traces.append(Labelled(f"t{i}", {"format": fmt, "reference_match": ref}, fmt))
    weights = fit_weights(traces, {"format": 0.2, "reference_match": 0.8})
    assert weights == {"format": 1.0, "reference_match": 0.0}
    with pytest.raises(ValueError, match="no labelled traces"):
        fit_weights([], {"format": 1.0})
    with pytest.raises(ValueError, match="positive"):
        fit_weights(traces, {"format": 0.0})


def test_the_split_is_stable_and_disjoint() -> None:
    traces = [Labelled(f"trace-{i}", {"format": 1.0}, 1.0) for i in range(500)]
    train, heldout = split(traces, 0.3)
    assert split(traces, 0.3) == (train, heldout)
    assert {t.trace_id for t in train}.isdisjoint(t.trace_id for t in heldout)
    assert 100 < len(heldout) < 200 and len(train) + len(heldout) == 500


# --- the job's decision --------------------------------------------------------------------


def test_a_calibration_on_simulated_users_is_published_and_a_second_one_rejected() -> None:
    traces = simulated_traces(400, seed=5, noise=0.1)
    current = load_rim_config(PROJECT_CONFIGS).as_calibration()
    first = calibrate(traces, current, CONFIG)
    assert first.state == "SUCCEEDED", first.reason
    assert first.after and first.before and first.after.mae < first.before.mae - 0.01
    assert first.candidate is not None
    again = calibrate(traces, first.candidate, CONFIG)  # nothing left to gain
    assert again.state == "REJECTED" and again.candidate is not None
    assert again.reason.startswith("held-out MAE") and "is not below the current" in again.reason
    assert again.metrics["heldout_candidate_mae"] == pytest.approx(first.after.mae)


def test_an_empty_or_non_finite_window_fails_with_a_readable_reason() -> None:
    current = Calibration(weights={"format": 1.0})
    empty = calibrate([], current, CONFIG)
    assert (empty.state, empty.candidate) == ("FAILED", None)
    assert empty.reason == "0 usable of 0 labelled traces (0 train / 0 held out; need 20 / 10)"
    nan = [Labelled(f"t{i}", {"format": math.nan}, 1.0) for i in range(50)]
    nan += [Labelled(f"u{i}", {"format": 1.0}, math.inf) for i in range(50)]
    failed = calibrate(nan, current, CONFIG)
    assert failed.state == "FAILED" and failed.reason.startswith("0 usable of 100 labelled")
    assert all(math.isfinite(v) for v in failed.metrics.values())


def test_the_agreement_gate() -> None:
    config = AgreementGateConfig(margin=0.01, kappa_tolerance=0.0)
    assert agreement_gate((0.30, 0.2), (0.20, 0.4), 50, config)[0]
    passed, reason = agreement_gate((0.30, 0.4), (0.295, 0.5), 50, config)
    assert not passed and "is not below the current 0.300 - margin 0.010" in reason
    passed, reason = agreement_gate((0.30, 0.4), (0.20, 0.3), 50, config)
    assert not passed and reason == "held-out kappa 0.300 < current 0.400 - 0.000"
    assert agreement_gate((0.30, None), (0.20, None), 50, config)[0]  # kappa undefined: 0
    passed, reason = agreement_gate((math.nan, 0.1), (0.1, 0.1), 50, config)
    assert not passed and reason.startswith("held-out figures are not usable")


def test_trigger_params_override_the_config_or_fail_by_name() -> None:
    assert CONFIG.with_overrides(3, {"gate.margin": "0.05"}).gate.margin == 0.05
    assert CONFIG.with_overrides(3, {}).max_rounds == 3
    with pytest.raises(ValueError, match=r"unknown calibration setting 'gate\.nope'"):
        CONFIG.with_overrides(None, {"gate.nope": "1"})
    with pytest.raises(ValueError):
        CONFIG.with_overrides(None, {"heldout_share": "nan"})
    assert isinstance(CONFIG, CalibrationConfig)


# --- a version's calibration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("{}", "weights"),
        ('{"weights": {"a": -1}}', "weights must be non-negative"),
        ('{"weights": {"a": NaN}}', "weights.a: Input should be a finite number"),
        ('{"weights": {"a": 1}, "score_map": [[0.5, 0.2], [0.4, 0.3]]}', "increasing"),
        ('{"weights": {"a": 1}, "score_map": [[0.1, 0.9], [0.4, 0.3]]}', "non-decreasing"),
        ('{"weights": {"a": 1}, "score_map": [[0.1, 2.0]]}', "[0, 1]"),
        ('{"weights": {"a": 1}, "extra": 1}', "extra"),
        ("not json", "text"),
    ],
)
def test_a_bad_calibration_text_is_one_readable_line(text: str, where: str) -> None:
    with pytest.raises(ValueError) as caught:
        Calibration.from_text(text)
    message = str(caught.value)
    assert message.startswith("not a RIM calibration: ") and "\n" not in message
    assert where in message


def test_the_map_interpolates_and_the_reward_uses_weights_then_map_then_the_human() -> None:
    calibration = Calibration(weights={"format": 1.0}, score_map=[(0.0, 0.1), (1.0, 0.7)])
    assert calibration.mapped(0.5) == pytest.approx(0.4)
    assert (calibration.mapped(-1.0), calibration.mapped(2.0)) == (0.1, 0.7)
    assert Calibration.from_text(calibration.to_text()) == calibration
    rim = Rim([ReferenceMatchJudge(), FormatJudge()])
    trace = InteractionEvent(
        agent_id="a", task_id="t", task_input="x", mode="auto", final_answer="Paris"
    )
    scores = [JudgeScore(judge="reference_match", score=0.0), JudgeScore(judge="format", score=1.0)]
    assert rim.combine(trace, scores).score == pytest.approx(0.5)  # configured: both weigh 1
    assert rim.combine(trace, scores, calibration=calibration).score == pytest.approx(0.7)
    approved = [FeedbackEvent(trace_id=trace.trace_id, kind="approve")]
    merged = rim.combine(trace, scores, approved, calibration)
    assert merged.score == pytest.approx(0.7 * 1.0 + 0.3 * 0.7)
    labelled = Labelled("t", {"reference_match": 0.0, "format": 1.0}, 1.0)
    assert machine_scores([labelled], calibration) == [pytest.approx(0.7)]


# --- the reward processor and the follower -------------------------------------------------


class Versions:
    """A RimVersionSource: agent 'cal' on version 2, every agent knows versions 0 and 2."""

    V2 = RimVersion(2, Calibration(weights={"format": 1.0}, score_map=[(0.0, 0.0), (1.0, 0.9)]))

    def current(self, agent_id: str) -> RimVersion:
        return self.V2 if agent_id == "cal" else RimVersion()

    def version(self, agent_id: str, version: int) -> RimVersion | None:
        return {0: RimVersion(), 2: self.V2}.get(version)


def _event(agent: str, **metadata: str) -> InteractionEvent:
    return InteractionEvent(
        agent_id=agent,
        task_id="t",
        task_family="extraction",
        task_input="Ship to Oslo. Which city?",
        reference="Oslo",
        mode="auto",
        final_answer="Oslo",
        metadata=metadata,
    )


def test_each_scored_trace_names_the_rim_version_that_scored_it() -> None:
    processor = RewardProcessor(
        Rim([ReferenceMatchJudge(), FormatJudge()]), rim_versions=Versions()
    )
    for agent, version, reward in (("cal", 2, 0.9), ("plain", 0, 1.0)):
        event = _event(agent)
        outcome = processor.on_interaction(event, None, processor.judge([event])[0])
        assert outcome.scored is not None
        assert (outcome.scored.rim_version, outcome.scored.reward) == (version, reward)
        assert processor.judge_score(outcome.scored) == pytest.approx(reward)
    # a replay pinned to version 0 scores with configs/rim.yaml, and says so
    pinned = _event("cal", **{RESCORE: "r", AFTER_REVISION: "1", RIM_VERSION: "0"})
    outcome = processor.on_interaction(pinned, None, processor.judge([pinned])[0])
    assert outcome.scored and (outcome.scored.rim_version, outcome.scored.reward) == (0, 1.0)
    assert RIM_VERSION not in outcome.scored.interaction.metadata


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("7", "rim v7 of agent cal is not known to this reward worker"),
        ("x", "metadata atlas.rim_version='x' is not a version number"),
        ("-1", "rim v-1 of agent cal is not known"),
    ],
)
def test_a_replay_pinned_to_an_unknown_version_is_dead_lettered(value: str, reason: str) -> None:
    processor = RewardProcessor(Rim([FormatJudge()]), rim_versions=Versions())
    event = _event("cal", **{RESCORE: "r", AFTER_REVISION: "1", RIM_VERSION: value})
    outcome = processor.on_interaction(event, None, processor.judge([event])[0])
    assert outcome.scored is None and outcome.rejected and outcome.rejected.startswith(reason)


def test_the_follower_keeps_valid_rim_versions_and_ignores_the_rest() -> None:
    codec = AvroCodec()
    follower = RimVersions({}, codec)

    def publish(role: str, version: int, text: str) -> None:
        event = PromptVersion(
            agent_id="ag/1", role=role, version=version, text=text, source="calibration"
        )
        follower._apply(key_of(event), codec.encode(event))

    good = Calibration(weights={"format": 1.0})
    publish(RIM_ROLE, 1, good.to_text())
    publish("student", 5, "Answer briefly.")
    publish(RIM_ROLE, 2, "{not json")
    assert follower.current("ag/1") == RimVersion(1, good)
    assert follower.invalid == 1 and follower.version("ag/1", 2) is None
    assert follower.version("ag/1", 0) == RimVersion() and follower.current("other") == RimVersion()


# --- the data the job reads, and one definition of agreement -------------------------------


def test_labelled_traces_are_the_latest_revision_with_its_finite_judge_scores(
    store: Client,
) -> None:
    from tests.test_human_agreement import AGENT, DAY1, DAY2, revisions

    StoreWriter(store).write(revisions())
    stored = store.query("SELECT DISTINCT rim_version FROM scored_traces").result_rows
    assert stored == [(2,)]  # the column the sink fills (migration 13)
    rows = labelled_traces(store, AGENT, DAY1, DAY2)  # day 1 only
    got = sorted(((sorted(scores.items()), human) for _, scores, human in rows))
    assert got == sorted(
        [
            ([("accuracy", 0.9)], 1.0),  # t1: the failed judge is left out
            ([("accuracy", 0.2), ("reference_match", 0.0)], 0.0),  # t2
            ([("accuracy", 0.8), ("reference_match", 1.0)], 0.0),  # t3
            ([("accuracy", 0.6), ("reference_match", 1.0)], 1.0),  # t4
            ([("accuracy", 0.4), ("reference_match", 1.0)], 0.5),  # t6: the latest human score
        ]
    )
    assert len(labelled_traces(store, AGENT, DAY1, DAY2, limit=2)) == 2
    # the job's agreement figures are the monitor's for the same pairs
    [sql] = [
        r
        for r in monitor(store, DAY1, AGENT)["human_agreement"]
        if r["judge"] == "accuracy" and r["day"] == DAY1.date()
    ]
    pairs = [(scores["accuracy"], human) for _, scores, human in rows]
    mine = agreement([m for m, _ in pairs], [h for _, h in pairs], 0.5)
    assert (mine.n, mine.tp, mine.fp, mine.fn, mine.tn) == (
        sql["n"], sql["tp"], sql["fp"], sql["fn"], sql["tn"]
    )  # fmt: skip
    assert mine.mae == pytest.approx(sql["mae"]) and mine.kappa == pytest.approx(sql["kappa"])
    assert mine.spearman == pytest.approx(sql["spearman"])


@dataclass
class SignedMsg(Msg):
    headers_: list[tuple[str, bytes | None]] | None = None

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self.headers_


def test_the_follower_takes_only_the_learners_signed_versions(tmp_path: Path) -> None:
    learner, intruder = create_keys(tmp_path / "learner"), create_keys(tmp_path / "intruder")
    codec = AvroCodec()
    follower = RimVersions({}, codec, Verifier(learner.public_key()))
    event = PromptVersion(
        agent_id="ag", role=RIM_ROLE, version=3, text='{"weights": {"format": 1}}', source="gepa"
    )
    key, value = key_of(event), codec.encode(event)
    for signer in (None, intruder, learner):
        headers = None if signer is None else [signer.header(PROMPTS, key, value)]
        message = SignedMsg(value, key, topic_=PROMPTS, headers_=headers)
        if follower._trusted(message):
            follower._apply(message.key(), message.value())
        assert follower.current("ag").version == (3 if signer is learner else 0)
    assert follower.refused == 2
