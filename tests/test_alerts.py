"""The alert processor's logic (streams/alerts.py), its stream wiring, config, webhook and
contract, without Kafka."""

from __future__ import annotations

import json
import logging
import math
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from schemas.alerts import Alert
from schemas.codec import AvroCodec, SchemaCatalog
from schemas.configfile import ConfigError
from schemas.models import RetrainTrigger
from schemas.topics import ALERT_OBSERVATIONS, ALERTS, DEADLETTER, TRIGGERS, key_of, topic_of
from store.writer import batches_for
from streams.alert_webhook import WebhookNotifier, shown_url
from streams.alerts import (
    ALL_AGENTS,
    AlertDetector,
    AlertState,
    DeadLetterTally,
    TraceSeen,
    observation_bytes,
    observation_of,
    robust_scale,
)
from streams.alerts_config import AlertsConfig, load_alerts_config
from streams.alerts_stream import alerts_stream
from streams.engine import Batch
from streams.retrain_policy import RetrainPolicyConfig
from tests.fakes import Msg

AGENT = "agent-a"
LENGTH = 400  # traces in every run, steady or not
DEFAULTS = AlertsConfig()
MIN_TRACES = DEFAULTS.reward_drop.min_traces


class Run:
    """One agent's traces through a detector, one revision each, collecting the alerts."""

    def __init__(self, config: AlertsConfig = DEFAULTS, agent: str = AGENT):
        self.detector, self.agent = AlertDetector(config), agent
        self.state = AlertState()
        self.alerts: list[tuple[int, Alert]] = []  # (trace index, alert)
        self.n = 0

    def reward(self, reward: float, judges: float | None = None, human: float | None = None):
        seen = TraceSeen(self.agent, f"t-{self.n}", 1, reward, judges, human)
        self.state, alerts, _ = self.detector.observe(self.state, seen)
        self.alerts += [(self.n, a) for a in alerts]
        self.n += 1
        return alerts


def steady(rng: random.Random, shape: int) -> float:
    """A noisy reward of a steady agent, in one of three shapes."""
    if shape == 0:
        return min(1.0, max(0.0, rng.gauss(0.75, 0.12)))
    if shape == 1:  # a human rating (3-5 of 5) at 70% and perfect judges at 30%
        return 0.7 * (rng.choice([3, 4, 5]) - 1) / 4 + 0.3
    return rng.uniform(0.4, 1.0)


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_steady_noisy_rewards_never_alert_over_many_seeds(shape: int) -> None:
    for seed in range(60):
        rng, run = random.Random(seed * 7 + shape), Run()
        for _ in range(LENGTH):
            run.reward(steady(rng, shape))
        assert run.alerts == [], f"seed {seed}: {run.alerts[0][1].message}"


def test_a_drop_fires_once_after_the_minimum_count_and_a_recovery_resolves_it() -> None:
    rng, run = random.Random(3), Run()
    for _ in range(250):
        run.reward(steady(rng, 0))
    dropped_at = run.n
    for _ in range(LENGTH - 250):
        run.reward(min(1.0, max(0.0, rng.gauss(0.2, 0.1))))
    [(index, fired)] = run.alerts  # one firing event, however long it lasts
    # the recent median falls once most of the recent window is low, then must hold
    half = DEFAULTS.reward_drop.recent_window // 2 + 1
    assert dropped_at + half + MIN_TRACES - 2 <= index <= dropped_at + half + MIN_TRACES + 2
    assert (fired.kind, fired.state, fired.agent_id) == ("reward_drop", "firing", AGENT)
    assert fired.baseline_median is not None and fired.mad is not None
    assert fired.recent_value < fired.threshold < fired.baseline_median
    assert fired.count == DEFAULTS.reward_drop.recent_window and "median" in fired.message
    for _ in range(100):  # the baseline stayed frozen while firing: recovery resolves
        run.reward(steady(rng, 0))
    assert [a.state for _, a in run.alerts] == ["firing", "resolved"]
    resolved = run.alerts[1][1]
    assert (resolved.alert_id, resolved.fired_at) == (fired.alert_id, fired.fired_at)
    assert resolved.updated_at >= fired.updated_at and resolved.message.startswith("resolved")
    for _ in range(60):  # a second drop is a new episode
        run.reward(0.1)
    assert [a.state for _, a in run.alerts] == ["firing", "resolved", "firing"]
    assert run.alerts[2][1].alert_id != fired.alert_id


def test_the_drop_must_hold_for_the_minimum_count() -> None:
    """With a recent window of one trace, the condition is that trace's reward: a run of
    min_traces - 1 low rewards does not fire, the min_traces-th does."""
    config = AlertsConfig(reward_drop={"recent_window": 1, "min_traces": 5})
    run, rng = Run(config), random.Random(5)
    for _ in range(100):
        run.reward(steady(rng, 0))
    for _ in range(4):
        run.reward(0.05)
    run.reward(0.8)
    assert run.alerts == []
    start = run.n
    for _ in range(5):
        run.reward(0.05)
    assert [(i - start, a.state) for i, a in run.alerts] == [(4, "firing")]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.1, 1.5])
def test_non_finite_and_out_of_range_rewards_are_ignored(bad: float) -> None:
    run = Run()
    for _ in range(100):
        run.reward(0.8)
    before = run.state.model_dump_json()
    for _ in range(50):
        assert run.reward(bad) == []
    assert run.state.model_dump_json() == before
    assert observation_of(b"a", observation_bytes(TraceSeen("a", "t", 1, bad))).reward == bad or (
        math.isnan(bad)
    )


def test_a_constant_baseline_uses_the_floor() -> None:
    floor = DEFAULTS.reward_drop.mad_floor
    assert robust_scale([0.8] * 60, floor) == (0.8, 0.0, floor)
    assert robust_scale([1.0] * 40 + [0.0] * 20, floor)[2] == pytest.approx(1.2533 / 3, 1e-3)
    run = Run()
    for _ in range(100):
        run.reward(0.8)
    for _ in range(40):
        run.reward(0.8 - 2.9 * floor)  # within k x floor: no alert
    assert run.alerts == []
    for _ in range(40):
        run.reward(0.8 - 3.1 * floor)
    [(_, fired)] = run.alerts
    assert (fired.baseline_median, fired.mad) == (0.8, 0.0)
    assert fired.threshold == pytest.approx(0.8 - 3 * floor)


def test_a_later_revision_replaces_its_trace_and_replays_are_ignored() -> None:
    detector, state = AlertDetector(DEFAULTS), AlertState()
    state, _, _ = detector.observe(state, TraceSeen(AGENT, "t-1", 1, 0.9))
    state, _, _ = detector.observe(state, TraceSeen(AGENT, "t-1", 2, 0.2))
    state, _, _ = detector.observe(state, TraceSeen(AGENT, "t-1", 2, 0.5))  # a replay
    state, _, _ = detector.observe(state, TraceSeen(AGENT, "t-old", 3, 0.1))  # not in windows
    assert state.recent == [("t-1", 2, 0.2)]


def test_judges_disagreeing_with_people_fire_and_agreeing_again_resolves() -> None:
    run = Run()
    floor = DEFAULTS.agreement
    for _ in range(30):  # judges pass, people approve: no alert
        run.reward(1.0, judges=1.0, human=1.0)
    for _ in range(40):  # people start rejecting what judges pass
        run.reward(0.3, judges=1.0, human=0.0)
    kinds = [(a.kind, a.state) for _, a in run.alerts]
    assert ("agreement_below_floor", "firing") in kinds
    fired = next(a for _, a in run.alerts if a.kind == "agreement_below_floor")
    assert fired.recent_value < floor.floor == fired.threshold and fired.count == floor.window
    for _ in range(60):
        run.reward(1.0, judges=1.0, human=1.0)
    agreement = [a.state for _, a in run.alerts if a.kind == "agreement_below_floor"]
    assert agreement == ["firing", "resolved"]


def test_the_dead_letter_rate_fires_over_every_agent_and_resolves() -> None:
    config = DEFAULTS.dead_letters
    detector, state, alerts = AlertDetector(DEFAULTS), AlertState(), []
    for tally in [DeadLetterTally(50, 0)] * 30 + [DeadLetterTally(50, 10)] * 10:
        state, changed, _ = detector.observe(state, tally)
        alerts += changed
    [fired] = alerts
    assert (fired.agent_id, fired.kind, fired.state) == (ALL_AGENTS, "dead_letter_rate", "firing")
    assert fired.recent_value > config.max_rate and fired.count <= config.window + 50
    for tally in [DeadLetterTally(50, 0)] * 40:
        state, changed, _ = detector.observe(state, tally)
        alerts += changed
    assert [a.state for a in alerts] == ["firing", "resolved"]


def test_observations_round_trip_and_bad_ones_are_refused() -> None:
    seen = TraceSeen(AGENT, "t-1", 2, 0.5, 0.9, None)
    assert observation_of(AGENT.encode(), observation_bytes(seen)) == seen
    tally = DeadLetterTally(10, 2)
    assert observation_of(b"*", observation_bytes(tally)) == tally
    for bad in (b"not json", b'["t", "t-1", 0, 0.5, null, null]', b'["x"]', b'["d", -1, 0]'):
        with pytest.raises(ValueError, match="not an alert observation"):
            observation_of(AGENT.encode(), bad)


def test_the_stream_sends_one_firing_across_batches_a_trigger_and_dead_letters_bad_input() -> None:
    codec = AvroCodec()
    config = AlertsConfig(retrain_on_reward_drop=True)
    table, handle = alerts_stream(AlertDetector(config), codec, None, RetrainPolicyConfig())
    table.partitions[0] = {}
    rewards = [0.8] * 100 + [0.1] * 60
    sent = []
    for start in range(0, len(rewards), 7):  # many batches: the state persists between them
        messages = [
            Msg(
                observation_bytes(TraceSeen(AGENT, f"t-{i}", 1, r)),
                AGENT.encode(),
                i,
                ALERT_OBSERVATIONS,
            )
            for i, r in enumerate(rewards[start : start + 7], start)
        ]
        if start == 0:
            messages.insert(1, Msg(b"garbage", AGENT.encode(), 999, ALERT_OBSERVATIONS))
        batch = Batch()
        handle(messages, batch)  # type: ignore[arg-type]
        sent += [(o.topic, o.key, o.value) for o in batch.outputs if o.topic != table.changelog]
    assert [(t, k) for t, k, _ in sent] == [
        (DEADLETTER, ALERT_OBSERVATIONS.encode()),
        (ALERTS, f"{AGENT}/reward_drop".encode()),
        (TRIGGERS, AGENT.encode()),
    ]
    alert = codec.decode(sent[1][2] or b"", Alert)
    trigger = codec.decode(sent[2][2] or b"", RetrainTrigger)
    assert alert.state == "firing" and trigger.requested_by == "alerts"
    assert alert.alert_id in trigger.reason and trigger.kind == "gepa"
    stored = AlertState.model_validate_json(table.get(0, AGENT.encode()) or b"")
    assert stored.episodes["reward_drop"].firing


def test_the_alert_contract_and_its_topic_store_and_fingerprint() -> None:
    codec, catalog = AvroCodec(), SchemaCatalog.load()
    alert = Alert(
        agent_id="a/b", kind="dead_letter_rate", state="firing", recent_value=0.2,
        threshold=0.05, count=1000, message="m",
    )  # fmt: skip
    data = codec.encode(alert)
    fingerprint = catalog.fingerprint(Alert.schema_name)
    assert data[2:10] == fingerprint and fingerprint in catalog.writers
    assert codec.decode(data, Alert) == alert
    assert (topic_of(alert), key_of(alert)) == (ALERTS, b"a/b/dead_letter_rate")
    [table] = batches_for([alert])
    assert table.table == "alerts" and table.columns == list(Alert.model_fields)


def test_the_config_loads_and_errors_are_one_line_without_the_url(tmp_path: Path) -> None:
    shipped = load_alerts_config(Path(__file__).parent.parent / "configs")
    assert shipped.model_dump() == AlertsConfig().model_dump()
    with pytest.raises(ConfigError, match="no such config file"):
        load_alerts_config(tmp_path)
    (tmp_path / "alerts.yaml").write_text("webhook_url: ftp://secret-token@example.com/x\n")
    with pytest.raises(ConfigError) as error:
        load_alerts_config(tmp_path)
    assert "secret-token" not in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "alerts.yaml").write_text("reward_drop: {min_baseline: 500}\n")
    with pytest.raises(ConfigError, match="min_baseline"):
        load_alerts_config(tmp_path)


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/secret-token", received
    finally:
        server.shutdown()


def test_the_webhook_posts_alerts_and_failures_never_show_the_secret(
    webhook_server: tuple[str, list[dict]], caplog: pytest.LogCaptureFixture
) -> None:
    url, received = webhook_server
    sent = Alert(
        agent_id=AGENT, kind="reward_drop", state="firing", recent_value=0.2, threshold=0.5,
        count=20, message="dropped",
    )  # fmt: skip
    notifier = WebhookNotifier(url, timeout_s=5)
    notifier.notify(sent)
    notifier.close()
    assert received == [sent.model_dump(mode="json")] and notifier.sent == 1
    assert shown_url(url) == f"http://127.0.0.1:{url.split(':')[2].split('/')[0]}/..."
    caplog.set_level(logging.WARNING)
    broken = WebhookNotifier("http://127.0.0.1:1/hooks/secret-token?key=hunter2", timeout_s=1)
    for _ in range(3):
        broken.notify(sent)
    broken.close()
    assert broken.failed == 3
    lines = [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]
    assert len(lines) == 1  # at most one line a minute
    assert "secret-token" not in lines[0] and "hunter2" not in lines[0]
