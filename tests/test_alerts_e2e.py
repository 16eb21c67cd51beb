"""Reward drift alerts end to end on the real broker and store, with the real worker processes
(`atlas worker rewards` and `atlas worker sink`): one agent's simulated users rate its answers
well, then start rejecting them; a reward_drop alert fires on atlas.alerts.v1, lands in the
alerts table and shows in `atlas status`. A second agent with a steady run of the same length
raises no alert."""

from __future__ import annotations

import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from atlas.cli import app
from atlas.settings import PROJECT_CONFIGS, Settings
from runtime.producer import EventProducer
from schemas.alerts import Alert
from schemas.codec import AvroCodec
from schemas.topics import ALERTS
from store.client import connect
from store.queries import current_alerts
from tests.factories import interaction
from tests.workers import WorkerProcess, eventually, reader_at_end

pytestmark = pytest.mark.integration

STEADY, DROPPED = 60, 30  # traces rated well, then rejected; the steady agent gets both counts
SMALL_WINDOWS = {
    "reward_drop": {
        "baseline_window": 40,
        "min_baseline": 30,
        "recent_window": 10,
        "min_traces": 5,
    },
}


def config_dir(tmp_path: Path) -> Path:
    """The project's configs with small alert windows, so a run of 90 traces is enough."""
    target = tmp_path / "configs"
    shutil.copytree(PROJECT_CONFIGS, target)
    alerts = yaml.safe_load((target / "alerts.yaml").read_text())
    for section, values in SMALL_WINDOWS.items():
        alerts[section].update(values)
    (target / "alerts.yaml").write_text(yaml.safe_dump(alerts))
    return target


def produce(kafka_config: dict[str, str], runs: dict[str, list[str]], seed: int) -> None:
    """For each agent, one trace per verdict, each followed by its user's feedback at once:
    'good' rates it 4 or 5 of 5 (noisy but steady), 'reject' rejects it. The agents' traces
    interleave, a few at a time, as live users would send them."""
    rng = random.Random(seed)
    with EventProducer(kafka_config) as producer:
        for i in range(max(map(len, runs.values()))):
            for agent, verdicts in runs.items():
                if i >= len(verdicts):
                    continue
                event = interaction(random.Random(seed * 1000 + i), agent)
                producer.record_interaction(event)
                if verdicts[i] == "reject":
                    producer.record_feedback(event.trace_id, "reject", agent_id=agent)
                else:
                    rating = float(rng.choice([4, 5]))
                    producer.record_feedback(
                        event.trace_id, "rating", rating=rating, agent_id=agent
                    )
            producer.flush()
            time.sleep(0.05)


def alerts_on_topic(consumer: Any, codec: AvroCodec, agents: set[str], out: list[Alert]) -> None:
    while (message := consumer.poll(0.2)) is not None:
        if message.error() or message.value() is None:
            continue
        alert = codec.decode(message.value(), Alert)
        if alert.agent_id in agents:
            out.append(alert)


def test_a_reward_drop_fires_an_alert_on_the_topic_in_the_store_and_in_status(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    dropping, steady = f"drift-{run}", f"steady-{run}"
    codec = AvroCodec()
    store = connect(stack_settings.store())
    env = {"ATLAS_CONFIG_DIR": str(config_dir(tmp_path))}
    reader = reader_at_end(kafka_config, [ALERTS])
    rewards = WorkerProcess(stack_settings, "rewards", tmp_path, env)
    sink = WorkerProcess(stack_settings, "sink", tmp_path)
    seen: list[Alert] = []
    try:
        eventually(lambda: b" ready" in rewards.log.read_bytes(), 120, "the reward worker")
        runs = {
            steady: ["good"] * (STEADY + DROPPED),
            dropping: ["good"] * STEADY + ["reject"] * DROPPED,
        }
        produce(kafka_config, runs, seed=2)

        def fired() -> list[Alert]:
            alerts_on_topic(reader, codec, {dropping, steady}, seen)
            return [a for a in seen if a.agent_id == dropping and a.kind == "reward_drop"]

        [alert] = eventually(fired, 240, "a reward_drop alert on the topic", interval=0.5)
        assert alert.state == "firing" and alert.baseline_median is not None
        assert alert.recent_value < alert.threshold < alert.baseline_median
        assert alert.recent_value < 0.5 < alert.baseline_median  # rejected: the human's 70% is 0

        stored = eventually(
            lambda: [a for a in current_alerts(store, dropping) if a.kind == "reward_drop"],
            60,
            "the alert in the alerts table",
            interval=0.5,
        )
        assert [(a.alert_id, a.state) for a in stored] == [(alert.alert_id, "firing")]

        status = CliRunner().invoke(
            app, ["status"], env={"ATLAS_HOME": str(stack_settings.home), "COLUMNS": "400"}
        )
        assert status.exit_code == 0, status.output
        shown = [row for row in status.output.splitlines() if dropping in row]
        assert [row for row in shown if "reward_drop" in row and "median" in row], status.output
        assert steady not in status.output

        # The steady agent's whole run is scored (its last trace too): still no alert of any kind.
        eventually(
            lambda: (
                store.query(
                    "SELECT count() FROM latest_traces WHERE agent_id = {a:String}"
                    " AND feedback_count > 0",
                    parameters={"a": steady},
                ).result_rows
                == [(STEADY + DROPPED,)]
            ),
            120,
            "the steady agent's traces in the store",
            interval=0.5,
        )
        alerts_on_topic(reader, codec, {dropping, steady}, seen)
        assert [a for a in seen if a.agent_id == steady] == []
        assert current_alerts(store, steady, firing_only=False) == []
        print(f"\n[alerts-e2e] {alert.message}\n{status.output}")
    finally:
        reader.close()
        rewards.stop()
        sink.stop()
