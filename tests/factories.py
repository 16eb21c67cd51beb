"""Valid example events of every type, for round-trip and store tests."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from ingest.exchange import Exchange
from schemas.alerts import Alert
from schemas.models import (
    CheckpointEvent,
    DeadLetter,
    Event,
    FeedbackEvent,
    InteractionEvent,
    JobStatus,
    JudgeScore,
    MemoryEntry,
    PromptRef,
    PromptVersion,
    RetrainTrigger,
    ScoredTrace,
    Step,
    Usage,
)
from schemas.rollouts import RolloutStatus


def interaction(
    rng: random.Random, agent_id: str = "agent-a", at: datetime | None = None
) -> InteractionEvent:
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    created = at or datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    return InteractionEvent(
        agent_id=agent_id,
        created_at=created,
        task_id=f"arith-{a}-{b}",
        task_family="arithmetic",
        task_input=f"Tom has {a} apples and buys {b} more. How many apples?",
        reference=str(a + b),
        mode="paired",
        prompt_versions=[
            PromptRef(role="student", version=1),
            PromptRef(role="teacher", version=1),
        ],
        models={"student": "smollm2-135m", "teacher": "smollm2-135m"},
        steps=[
            Step(
                index=0,
                role="student",
                kind="answer",
                content=str(a + b - 1),
                model="smollm2-135m",
                prompt_tokens=40,
                completion_tokens=5,
                latency_ms=120.0,
            ),
            Step(
                index=1,
                role="teacher",
                kind="review",
                content="incorrect",
                verdict="fail",
                model="smollm2-135m",
                prompt_tokens=60,
                completion_tokens=3,
                latency_ms=80.0,
            ),
            Step(
                index=2,
                role="student",
                kind="retry",
                content=str(a + b),
                model="smollm2-135m",
                prompt_tokens=70,
                completion_tokens=4,
                latency_ms=110.0,
            ),
        ],
        final_answer=str(a + b),
        baseline_answer=str(a + b - 1),
        usage=Usage(prompt_tokens=170, completion_tokens=12),
        latency_ms=310.0,
        metadata={"session": "s1"},
    )


def scored(event: InteractionEvent, rng: random.Random, revision: int = 1) -> ScoredTrace:
    reward = round(rng.random(), 4)
    return ScoredTrace(
        trace_id=event.trace_id,
        agent_id=event.agent_id,
        revision=revision,
        scored_at=event.created_at + timedelta(seconds=2),
        interaction=event,
        reward=reward,
        judge_scores=[
            JudgeScore(judge="reference_match", score=1.0, rationale="matches", samples=1),
            JudgeScore(
                judge="accuracy",
                score=reward,
                rationale="looks right",
                uncertainty=0.1,
                escalated=False,
                samples=3,
            ),
        ],
        rationale="matches the reference",
        uncertainty=0.1,
        escalated=rng.random() < 0.1,
        feedback_count=revision - 1,
        baseline_reward=0.0,
        rim_version=2,  # a calibrated RIM's (0 would look like a reader's default)
    )


def one_of_each(rng: random.Random) -> list[Event]:
    event = interaction(rng)
    return [
        event,
        FeedbackEvent(trace_id=event.trace_id, agent_id="agent-a", kind="edit", edited_text="42"),
        scored(event, rng),
        PromptVersion(
            agent_id="agent-a",
            role="teacher",
            version=2,
            parent_version=1,
            text="Review the answer.",
            source="gepa",
            job_id="job-1",
            trigger_id="t-1",
            window_start=event.created_at,
            window_end=event.created_at,
            heldout_reward=0.6,
            baseline_reward=0.5,
            non_degradation=0.98,
        ),
        CheckpointEvent(
            agent_id="agent-a",
            role="teacher",
            version=1,
            uri="file:///ckpt/1",
            base_model="SmolLM2-135M-Instruct",
            sha256={"model.safetensors": "ab" * 32},
            source="grpo",
        ),
        RetrainTrigger(
            kind="gepa", agent_id="agent-a", reason="operator", budget=50, params={"minibatch": "3"}
        ),
        JobStatus(
            job_id="job-1",
            trigger_id="t-1",
            kind="gepa",
            agent_id="agent-a",
            state="RUNNING",
            seq=2,
            progress=0.5,
            message="iteration 3",
            metrics={"best": 0.6},
        ),
        DeadLetter(
            source_topic="atlas.interactions.v1",
            source_partition=2,
            source_offset=17,
            key=b"k",
            original=b"\x00\xffgarbage",
            reason="not an atlas Avro message",
            error_type="DecodeError",
            processor="rewards",
        ),
        MemoryEntry(
            agent_id="agent-a",
            role="student",
            entry_id="0f" * 16,
            input=event.task_input,
            output="42",
            source="edit",
            source_trace_id=event.trace_id,
            reward=0.25,
            terms=["what", "is", "6", "7"],
        ),
        RolloutStatus(
            agent_id="agent-a",
            role="student",
            rollout_id="r-1",
            canary_version=3,
            production_version=2,
            state="rolled_back",
            started_at=event.created_at,
            canary_count=40,
            canary_mean=0.41,
            production_count=360,
            production_mean=0.72,
            lower=-0.52,
            upper=-0.08,
            alpha=0.05,
            reason="canary worse by more than 0",
        ),
        Alert(
            agent_id="agent-a",
            kind="reward_drop",
            state="firing",
            baseline_median=0.8,
            mad=0.05,
            recent_value=0.3,
            threshold=0.58,
            count=20,
            message="reward of agent-a: median 0.300 of the last 20 traces",
        ),
    ]


def no_completion_exchange() -> Exchange:
    """An exchange the proxy saw whose answer holds no completion: counted, never recorded."""
    return Exchange(
        "t",
        "a",
        {"messages": [{"role": "user", "content": "x"}]},
        b"{}",
        streamed=False,
        latency_ms=1.0,
    )
