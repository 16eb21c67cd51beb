"""Canary rollouts end to end (issue 17's must-show) on the real broker and store: a better
canary is promoted and a worse one rolled back by `atlas worker rollouts`, the agents' versions
switch, the decisions are on atlas.rollouts.v1 and in ClickHouse, and a controller killed with
``kill -9`` mid-rollout decides once; a canary whose mean reward equals production's but that
loses production's right answers is rolled back by non-degradation on live traffic."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from atlas.settings import PROJECT_CONFIGS, Settings
from runtime.backends.base import Message
from runtime.core import Runtime
from runtime.producer import EventProducer
from runtime.prompts import PromptSubscriber, StaticPrompts
from runtime.tasks import Task
from schemas.codec import AvroCodec
from schemas.rollouts import RolloutStatus
from schemas.topics import ROLLOUTS
from store.client import connect
from tests.fakes import ScriptedBackend
from tests.workers import WorkerProcess, eventually, stack_cli

pytestmark = pytest.mark.integration
SEEDS = StaticPrompts({"student": "seed", "teacher": "seed"})
TASK = Task("What is 2 + 2?", "t", "arithmetic", "4", "integer")
OTHER_TASK = Task("What is 3 + 3?", "t2", "arithmetic", "6", "integer")
RIGHT, WRONG = "4", "5"  # the scripted student answers with its prompt's text


def echo_system(conversation: Sequence[Message]) -> str:
    return conversation[0]["content"]


def fast_configs(tmp_path: Path) -> Path:
    """The project's configs with a test that decides on a few dozen tasks per arm."""
    configs = tmp_path / "configs"
    shutil.copytree(PROJECT_CONFIGS, configs)
    (configs / "rollout.yaml").write_text(
        "test:\n  alpha: 0.05\n  min_samples: 20\n  tuned_samples: 50\n"
        "max_duration_s: 3600\nreport_every: 10\n"
    )
    return configs


def statuses(kafka_config: dict[str, str], rollout_id: str) -> list[RolloutStatus]:
    """Every status of ``rollout_id`` on atlas.rollouts.v1, as a read_committed reader sees."""
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"probe-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
        }
    )
    parts = consumer.list_topics(ROLLOUTS, timeout=10).topics[ROLLOUTS].partitions
    consumer.assign([TopicPartition(ROLLOUTS, p, 0) for p in parts])
    codec, found, idle = AvroCodec(), [], 0
    while idle < 5:
        message = consumer.poll(0.5)
        if message is None or message.error():
            idle += 1
            continue
        idle = 0
        if message.value() is not None:
            status = codec.decode(message.value(), RolloutStatus)
            if status.rollout_id == rollout_id:
                found.append(status)
    consumer.close()
    return found


def stored_decisions(store, rollout_id: str) -> list[tuple[str]]:  # type: ignore[no-untyped-def]
    sql = (
        "SELECT state FROM rollout_statuses FINAL WHERE rollout_id = {r:String}"
        " AND state != 'running'"
    )
    return store.query(sql, parameters={"r": rollout_id}).result_rows


class Agent:
    """An agent with production ``production`` and canary ``canary`` (prompt texts), run on
    real traffic through the stack."""

    def __init__(self, settings: Settings, cli, name: str, production: str, canary: str):  # type: ignore[no-untyped-def]
        self.settings, self.name = settings, name
        cli("prompts", "set", "--agent", name, "--text", canary, "--force")  # v1
        cli("prompts", "set", "--agent", name, "--text", production, "--force")  # v2
        store = connect(settings.store())
        sql = "SELECT count() FROM prompt_versions FINAL WHERE agent_id = {a:String}"
        eventually(
            lambda: store.query(sql, parameters={"a": name}).result_rows == [(2,)],
            60, "both versions stored", interval=0.5,
        )  # fmt: skip
        cli("prompts", "label", "--agent", name, "--label", "canary", "--version", "1",
            "--share", "0.5")  # fmt: skip
        self.prompts = PromptSubscriber(settings.kafka_config(), SEEDS).start()
        eventually(lambda: "student" in self.prompts.canaries(name), 30, "the canary label")
        self.rollout_id = self.prompts.canaries(name)["student"].rollout_id or ""
        student = ScriptedBackend("s", echo_system)
        self.runtime = Runtime(name, student, student, self.prompts)

    def traffic(self, n: int, tasks: Sequence[Task] = (TASK,)) -> None:
        events = self.runtime.run_many([tasks[i % len(tasks)] for i in range(n)], mode="auto")
        with EventProducer(self.settings.kafka_config("agent")) as producer:
            for event in events:
                producer.record_interaction(event)


def test_a_better_canary_is_promoted_a_worse_one_rolled_back_and_a_kill_decides_once(
    stack_settings: Settings, tmp_path: Path
) -> None:
    cli = stack_cli(stack_settings)
    run = uuid.uuid4().hex[:8]
    env = {"ATLAS_CONFIG_DIR": str(fast_configs(tmp_path))}
    kafka = stack_settings.kafka_config()
    store = connect(stack_settings.store())
    workers = [WorkerProcess(stack_settings, k, tmp_path) for k in ("rewards", "sink")]
    controller = WorkerProcess(stack_settings, "rollouts", tmp_path, env)
    good = Agent(stack_settings, cli, f"good-{run}", production=WRONG, canary=RIGHT)
    bad = Agent(stack_settings, cli, f"bad-{run}", production=RIGHT, canary=WRONG)
    try:
        good.traffic(16)  # a few per arm: running, undecided
        eventually(lambda: statuses(kafka, good.rollout_id), 120, "a running status", 1)
        assert all(s.state == "running" for s in statuses(kafka, good.rollout_id))
        controller.kill9()  # mid-rollout
        controller = WorkerProcess(stack_settings, "rollouts", tmp_path, env)
        for agent in (good, bad):
            deadline = time.monotonic() + 240
            while agent.prompts.canaries(agent.name) and time.monotonic() < deadline:
                agent.traffic(20)
                time.sleep(2)
        # the agents' versions switched: the good canary is production, the bad one gone
        assert good.prompts.canaries(good.name) == {} and bad.prompts.canaries(bad.name) == {}
        assert good.prompts.snapshot(good.name)["student"].text == RIGHT
        assert bad.prompts.snapshot(bad.name)["student"].text == RIGHT
        assert good.runtime.run(TASK, "auto").rollouts == []
        for agent, decision in ((good, "promoted"), (bad, "rolled_back")):
            on_topic = statuses(kafka, agent.rollout_id)
            decided = [s for s in on_topic if s.state != "running"]
            assert [s.state for s in decided] == [decision], on_topic  # once, after the kill too
            eventually(
                lambda a=agent: stored_decisions(store, a.rollout_id) == [(decision,)],  # noqa: B023
                60, f"the {decision} row", interval=1,
            )  # fmt: skip
            print(f"\n[rollout-e2e] {agent.name}: {decided[0].state}: {decided[0].reason}")
        assert "promoted" in cli("rollout", "status", "--agent", good.name)
    finally:
        controller.stop()
        for worker in workers:
            worker.stop()
        good.prompts.close()
        bad.prompts.close()


def test_a_canary_as_rewarded_as_production_but_losing_its_answers_is_rolled_back(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """Production answers 2 + 2 right and 3 + 3 wrong, the canary the other way round: both
    arms' mean reward is 0.5, so the rewards cannot tell them apart, but on its own tasks the
    canary loses every answer production gets right (production's shadow answers say so)."""
    cli = stack_cli(stack_settings)
    env = {"ATLAS_CONFIG_DIR": str(fast_configs(tmp_path))}
    store = connect(stack_settings.store())
    workers = [WorkerProcess(stack_settings, k, tmp_path) for k in ("rewards", "sink")]
    workers.append(WorkerProcess(stack_settings, "rollouts", tmp_path, env))
    agent = Agent(stack_settings, cli, f"swap-{uuid.uuid4().hex[:8]}", production="4", canary="6")
    try:
        deadline = time.monotonic() + 240
        while agent.prompts.canaries(agent.name) and time.monotonic() < deadline:
            agent.traffic(20, (TASK, OTHER_TASK))
            time.sleep(2)
        assert agent.prompts.canaries(agent.name) == {}
        assert agent.prompts.snapshot(agent.name)["student"].text == "4"  # production stays
        [decided] = [
            s for s in statuses(stack_settings.kafka_config(), agent.rollout_id)
            if s.state != "running"
        ]  # fmt: skip
        assert decided.state == "rolled_back", decided
        assert decided.lower < 0 < decided.upper  # the means could not tell
        # the canary kept none of production's right answers on its tasks (about half)
        assert decided.paired_count >= 20 and decided.right_count > 0
        assert decided.retention == 0.0 and decided.non_degradation is not None
        assert decided.non_degradation_upper is not None and decided.non_degradation_upper < 0.9
        assert "below the minimum" in decided.reason
        print(f"\n[rollout-e2e] {agent.name}: {decided.state}: {decided.reason}")
        sql = (
            "SELECT paired_count, right_count, retention FROM rollout_statuses FINAL"
            " WHERE rollout_id = {r:String} AND state = 'rolled_back'"
        )
        eventually(
            lambda: store.query(sql, parameters={"r": agent.rollout_id}).result_rows
            == [(decided.paired_count, decided.right_count, 0.0)],
            60, "the decision's figures in ClickHouse", interval=1,
        )  # fmt: skip
        shadow = (
            "SELECT tupleElement(r, 'arm'), production_answer, production_reward"
            " FROM latest_traces ARRAY JOIN rollouts AS r"
            " WHERE agent_id = {a:String} AND task_id = 't'"
        )
        rows = store.query(shadow, parameters={"a": agent.name}).result_rows
        assert {r for r in rows if r[0] == "canary"} == {("canary", "4", 1.0)}
        assert {r for r in rows if r[0] == "production"} == {("production", None, None)}
    finally:
        for worker in reversed(workers):
            worker.stop()
        agent.prompts.close()
