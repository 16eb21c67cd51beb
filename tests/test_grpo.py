"""GRPO: the loop's pieces, then real jobs on CPU from a trigger, through the deepspeed launcher
(ZeRO-2 engaged), to a published checkpoint that a running agent hot-loads, or a rejection;
and a run rigged to get worse, which the gate must reject with nothing published."""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from atlas.settings import PROJECT_CONFIGS, Settings
from consumers.grpo_worker import GrpoJobContext, run_grpo_job
from consumers.jobs import TERMINAL, read_job_states
from rim.config import build_rim, load_rim_config
from runtime.backends.local import SMOLLM2_NAME
from runtime.checkpoints import (
    CheckpointFollower,
    HotLoadingBackend,
    checkpoint_labels,
    current_checkpoints,
    verify,
)
from runtime.producer import EventProducer
from runtime.prompts import StaticPrompts
from runtime.tasks import generate
from schemas.codec import AvroCodec
from schemas.models import JobStatus, RetrainTrigger
from store.client import connect
from store.writer import StoreWriter
from tests.factories import interaction, scored
from tests.fakes import ScriptedBackend
from tests.workers import eventually, start_trigger_worker
from trainer.datasets import DatasetConfig
from trainer.grpo import RolloutScorer, group_advantages
from trainer.grpo_config import GrpoConfig

pytest.importorskip("deepspeed", reason="GRPO needs the train extra")
SEEDS = {"student": "Answer with the city only.", "teacher": "You are a reviewer."}


def test_group_advantages_are_relative_and_vanish_for_flat_groups() -> None:
    advantages = group_advantages([1, 0, 0, 0, 0.5, 0.5, 0.5, 0.5], 4)
    assert advantages[0] > 0 > advantages[1] and advantages[1] == advantages[2]
    assert advantages[4:] == [0.0] * 4
    assert abs(sum(advantages[:4])) < 1e-9


def test_teacher_rewards_come_from_the_student_retry_and_leaks_earn_nothing() -> None:
    task = generate("arithmetic", "test", 1)[0]
    student = ScriptedBackend(
        "s", lambda c: task.reference if "subtract" in c[-1]["content"] else "0"
    )
    scorer = RolloutScorer("teacher", build_rim(load_rim_config(PROJECT_CONFIGS)), SEEDS, student)
    hints = ["Try to subtract again.", "Look again.", f"It is {task.reference}, subtract."]
    rewards = scorer.rewards([task] * 3, ["0"] * 3, hints)
    assert rewards[0] > rewards[1] and rewards[2] == 0.0


@pytest.fixture
def extraction_agent(stack_settings: Settings) -> str:
    agent = f"grpo-{uuid.uuid4().hex[:8]}"
    rng = random.Random(2)
    traces = []
    for task in generate("extraction", "train", 40, seed=2):
        event = interaction(rng, agent, at=datetime.now(UTC)).model_copy(
            update={
                "task_id": task.task_id,
                "task_family": "extraction",
                "task_input": task.input,
                "reference": task.reference,
            }
        )
        traces.append(scored(event, rng))
    StoreWriter(connect(stack_settings.store())).write(traces)
    return agent


def _tiny(learning_rate: float) -> GrpoConfig:
    return GrpoConfig(
        role="student",
        steps=2,
        prompts_per_step=2,
        group_size=4,
        max_completion_tokens=16,
        learning_rate=learning_rate,
        eval_mode="auto",
        eval_answer_tokens=24,
        dataset=DatasetConfig(train_size=16, heldout_size=6, builtin_pool=20),
    )


@pytest.fixture
def grpo_worker(
    stack_settings: Settings, local_backend: Any, model_dir: Path, tmp_path: Path
) -> Iterator[Callable[[GrpoConfig], None]]:
    kafka = stack_settings.kafka_config()
    url = stack_settings.store()
    threads: list[tuple[threading.Event, threading.Thread]] = []

    def start(config: GrpoConfig) -> None:
        context = GrpoJobContext(
            kafka_config=kafka,
            connect_store=lambda: connect(url),
            student=local_backend,
            rim=build_rim(load_rim_config(PROJECT_CONFIGS)),
            config=config,
            config_dir=PROJECT_CONFIGS,
            seed_prompts=StaticPrompts(SEEDS),
            base_model_dir=model_dir,
            base_model_name=SMOLLM2_NAME,
            checkpoint_root=tmp_path / "checkpoints",
            run_root=tmp_path / "jobs",
        )
        threads.append(
            start_trigger_worker(
                kafka, "grpo", lambda trigger, reporter: run_grpo_job(trigger, reporter, context)
            )
        )

    yield start
    for stop, thread in threads:
        stop.set()
        thread.join(60)


def _run_job(kafka: dict[str, str], agent: str) -> JobStatus:
    with EventProducer(kafka) as producer:
        producer.send(RetrainTrigger(kind="grpo", agent_id=agent, reason="test"))
    codec = AvroCodec()

    def finished() -> JobStatus | None:
        for state in read_job_states(kafka, codec).values():
            if state.agent_id == agent and state.state in TERMINAL:
                return state
        return None

    return eventually(finished, 600, f"the GRPO job of {agent}")


def test_a_tiny_grpo_run_from_trigger_to_a_hot_loaded_checkpoint(
    stack_settings: Settings,
    extraction_agent: str,
    grpo_worker: Callable[[GrpoConfig], None],
    model_dir: Path,
) -> None:
    from runtime.backends.local import LocalBackend

    kafka = stack_settings.kafka_config()
    grpo_worker(_tiny(learning_rate=1e-6))  # gate margin 0: a model no worse is published
    job = _run_job(kafka, extraction_agent)
    assert job.state == "SUCCEEDED", job.message
    assert job.metrics["train_zero_stage"] == 2.0 and job.metrics["train_step"] == 2.0
    assert "train_reward" in job.metrics and "train_kl" in job.metrics
    # what passed the gate goes out as a canary (configs/grpo.yaml canary_share 0.1)
    assert current_checkpoints(kafka, extraction_agent, ["student"]) == {}
    checkpoint = checkpoint_labels(kafka, extraction_agent).get(("student", "canary"))
    assert checkpoint is not None and checkpoint.version == 1 == job.result_version
    assert checkpoint.traffic_share == 0.1 and checkpoint.rollout_id
    assert checkpoint.job_id == job.job_id and checkpoint.source == "grpo"
    folder = verify(checkpoint)
    assert {"model.safetensors", "tokenizer.json"} <= set(checkpoint.sha256)
    card = json.loads((folder / "card.json").read_text())
    assert card["base_model"] == SMOLLM2_NAME and card["job_id"] == job.job_id
    assert card["sha256"] == checkpoint.sha256

    with CheckpointFollower(kafka).start() as follower:
        backend = HotLoadingBackend(
            LocalBackend(model_dir, max_batch=4), follower, extraction_agent, "student",
            lambda canary: LocalBackend(canary, max_batch=4),
        )  # fmt: skip
        backend.between_tasks()
        rollout = backend.rollout()  # the canary runs beside production, the base model
        assert rollout is not None and [e.version for e in rollout] == [0, 1]
        canary = backend.on_arm("canary")
        assert canary.model_dir == folder and canary.model_name.endswith("@v1")  # type: ignore[attr-defined]
        assert backend.version is None and backend.backend.model_dir == model_dir


def test_a_run_rigged_to_get_worse_is_rejected_and_nothing_is_published(
    stack_settings: Settings,
    extraction_agent: str,
    grpo_worker: Callable[[GrpoConfig], None],
    tmp_path: Path,
) -> None:
    kafka = stack_settings.kafka_config()
    grpo_worker(_tiny(learning_rate=0.5))  # one step at this rate wrecks any model
    job = _run_job(kafka, extraction_agent)
    assert job.state == "REJECTED", job.message
    assert job.metrics["heldout_candidate_reward"] < job.metrics["heldout_current_reward"]
    assert current_checkpoints(kafka, extraction_agent, ["student"]) == {}
    assert not list((tmp_path / "checkpoints").glob("**/*.safetensors"))
