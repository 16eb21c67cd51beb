"""The learning loop with the real worker processes and the offline model.

* The automatic retrain policy inside `atlas worker rewards` fires one trigger for a burst of
  traffic (and no more, debounced).
* `atlas worker gepa` on SmolLM2-135M: killed with SIGKILL mid-job and restarted, the job
  ends FAILED and is never run again, and nothing is published; the next trigger runs to
  SUCCEEDED or REJECTED with the held-out figures.
"""

from __future__ import annotations

import random
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from atlas.settings import PROJECT_CONFIGS, Settings
from consumers.jobs import TERMINAL, read_job_reports
from runtime.producer import EventProducer
from runtime.prompts import PromptSubscriber, StaticPrompts
from runtime.tasks import generate
from schemas.codec import AvroCodec
from schemas.models import JobStatus, RetrainTrigger
from schemas.topics import TRIGGERS
from store.client import connect
from store.writer import StoreWriter
from tests.factories import interaction, scored
from tests.workers import WorkerProcess, eventually, skip_to_end


def _configs(tmp_path: Path, **overrides: dict[str, Any]) -> Path:
    """A copy of configs/ with some top-level keys of some files replaced."""
    target = tmp_path / "configs"
    shutil.copytree(PROJECT_CONFIGS, target)
    for name, values in overrides.items():
        path = target / f"{name}.yaml"
        config = yaml.safe_load(path.read_text())
        config.update(values)
        path.write_text(yaml.safe_dump(config))
    return target


def _triggers_for(kafka_config: dict[str, str], agent: str, wait: float) -> list[RetrainTrigger]:
    from confluent_kafka import Consumer

    codec = AvroCodec()
    consumer = Consumer(
        {**kafka_config, "group.id": f"probe-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([TRIGGERS])
    found: list[RetrainTrigger] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        trigger = codec.decode(message.value(), RetrainTrigger)
        if trigger.agent_id == agent:
            found.append(trigger)
    consumer.close()
    return found


def test_the_reward_worker_fires_one_debounced_trigger(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    agent = f"policy-{uuid.uuid4().hex[:8]}"
    configs = _configs(
        tmp_path,
        retrain_policy={"window": 5, "every_n_traces": 20, "cooldown_s": 3600, "kind": "gepa"},
    )
    rewards = WorkerProcess(
        stack_settings, "rewards", tmp_path, env={"ATLAS_CONFIG_DIR": str(configs)}
    )
    rng = random.Random(5)
    try:
        with EventProducer(kafka_config) as producer:
            for _ in range(60):  # three times the count: the cooldown must hold the rest
                producer.record_interaction(interaction(rng, agent, at=datetime.now(UTC)))
        first = eventually(
            lambda: _triggers_for(kafka_config, agent, 3), 120, "the policy's trigger"
        )
        time.sleep(10)  # let the remaining traces through the policy
        triggers = _triggers_for(kafka_config, agent, 5)
    finally:
        rewards.stop()
    assert len(triggers) == 1, [t.reason for t in triggers]
    (trigger,) = first
    assert trigger.requested_by == "policy" and trigger.kind == "gepa"
    assert "new scored traces" in trigger.reason or "fell below" in trigger.reason
    assert trigger.window_start is not None and trigger.window_end is not None


def _store_arithmetic_traces(settings: Settings, agent: str, n: int) -> None:
    rng = random.Random(9)
    now = datetime.now(UTC)
    traces = []
    for task in generate("arithmetic", "test", n, seed=9):
        event = interaction(rng, agent, at=now).model_copy(
            update={"task_id": task.task_id, "task_input": task.input, "reference": task.reference}
        )
        traces.append(scored(event, rng))
    StoreWriter(connect(settings.store())).write(traces)


def _job_reports(kafka_config: dict[str, str], agent: str) -> dict[str, list[JobStatus]]:
    jobs: dict[str, list[JobStatus]] = {}
    for report in read_job_reports(kafka_config, AvroCodec()):
        if report.agent_id == agent:
            jobs.setdefault(report.job_id, []).append(report)
    return jobs


def _trigger(kafka_config: dict[str, str], agent: str, budget: int) -> RetrainTrigger:
    trigger = RetrainTrigger(
        kind="gepa", agent_id=agent, reason="test", requested_by="operator", budget=budget
    )
    with EventProducer(kafka_config) as producer:
        producer.send(trigger)
    return trigger


def test_gepa_worker_on_the_offline_model_survives_a_kill(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    agent = f"offline-{uuid.uuid4().hex[:8]}"
    _store_arithmetic_traces(stack_settings, agent, 40)
    configs = _configs(
        tmp_path,
        gepa={
            "eval_mode": "auto",
            "minibatch_size": 2,
            "reflection_max_tokens": 96,
            "limits": {"answer_tokens": 32, "temperature": 0.0},
            "dataset": {"train_size": 8, "validation_size": 4, "heldout_size": 8},
            "demonstrations": {"enabled": False},  # the prompt texts only: a short job
        },
    )
    env = {"ATLAS_CONFIG_DIR": str(configs), "ATLAS_WORKER_ID": f"w-{agent}"}
    skip_to_end(kafka_config, "atlas-gepa", TRIGGERS)
    worker = WorkerProcess(stack_settings, "gepa", tmp_path, env=env)
    try:
        killed = _trigger(kafka_config, agent, budget=200)  # far more than it gets to run

        def running() -> bool:
            reports = _job_reports(kafka_config, agent)
            return any("optimizing" in r.message for rs in reports.values() for r in rs)

        eventually(running, 240, "the first job to be optimizing")
        worker.kill9()
        worker = WorkerProcess(stack_settings, "gepa", tmp_path, env=env)

        def failed() -> list[JobStatus]:
            reports = [r for rs in _job_reports(kafka_config, agent).values() for r in rs]
            return [r for r in reports if r.state == "FAILED"]

        (failure,) = eventually(failed, 120, "the killed job to be marked FAILED")
        assert failure.trigger_id == killed.trigger_id and "restarted" in failure.message

        second = _trigger(kafka_config, agent, budget=10)

        def finished() -> JobStatus | None:
            for reports in _job_reports(kafka_config, agent).values():
                last = reports[-1]
                if last.trigger_id == second.trigger_id and last.state in TERMINAL:
                    return last
            return None

        done = eventually(finished, 900, "the second job to finish")
    finally:
        worker.stop()
    jobs = _job_reports(kafka_config, agent)
    assert len(jobs) == 2
    first_reports = jobs[failure.job_id]
    assert first_reports[-1].state == "FAILED"  # never ran again after the failure
    assert sum(r.state == "QUEUED" for r in first_reports) == 1
    assert done.state in ("SUCCEEDED", "REJECTED"), done.message
    for figure in ("heldout_candidate_reward", "heldout_current_reward", "heldout_n"):
        assert figure in done.metrics
    assert done.metrics["metric_calls"] >= 10
    with PromptSubscriber(
        kafka_config, StaticPrompts({"student": "s", "teacher": "t"})
    ).start() as p:
        versions = p.snapshot(agent)
    published = {role: v.job_id for role, v in versions.items() if v.version > 0}
    assert failure.job_id not in published.values()  # nothing half-finished from the killed job
    assert bool(published) == (done.state == "SUCCEEDED")
