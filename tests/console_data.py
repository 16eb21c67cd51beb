"""A small history for the console's tests, written through the store writer from the test
factories: an agent's scored traces over the last hours (one revised after a user's edit), a
firing alert, and a GEPA trigger with its job's reports (queued, running, succeeded with gate
figures and the version it published)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from clickhouse_connect.driver.client import Client

from schemas.alerts import Alert
from schemas.models import (
    CheckpointEvent,
    FeedbackEvent,
    JobStatus,
    PromptRef,
    PromptVersion,
    RetrainTrigger,
)
from store.writer import StoreWriter
from tests.factories import interaction, scored

EDIT = "The answer is 42 apples."


@dataclass(frozen=True)
class Seeded:
    agent: str
    edited_trace: str  # revised: revision 2 after the user's edit
    low_trace: str  # the trace with the lowest reward
    job_id: str
    trigger_id: str
    window: tuple[datetime, datetime]
    edited_rewards: tuple[float, float]  # revision 1's, then revision 2's


def seed_history(client: Client, agent: str, traces: int = 24) -> Seeded:
    """Write the history of ``agent`` (traces spread over the last ``traces`` / 2 hours)."""
    rng = random.Random(7)
    now = datetime.now(UTC).replace(microsecond=0)
    events: list = []
    scored_traces = []
    for i in range(traces):
        event = interaction(rng, agent, at=now - timedelta(minutes=30 * (traces - i)))
        version = 1 if i < traces // 2 else 2
        event = event.model_copy(
            update={
                "prompt_versions": [
                    PromptRef(role="student", version=version),
                    PromptRef(role="teacher", version=1),
                ]
            }
        )
        scored_traces.append(scored(event, rng))
    edited = scored_traces[-1]
    feedback = FeedbackEvent(
        trace_id=edited.trace_id, agent_id=agent, kind="edit", edited_text=EDIT
    )
    revised = scored(edited.interaction, rng, revision=2).model_copy(
        update={"human_score": 0.2, "rationale": "the user edited the answer"}
    )
    events += [*scored_traces, feedback, revised]
    low = min(scored_traces[:-1], key=lambda t: t.reward)
    window = (now - timedelta(hours=12), now - timedelta(hours=1))
    trigger = RetrainTrigger(
        kind="gepa",
        agent_id=agent,
        reason="operator request (12h of traces)",
        requested_by="operator",
        created_at=now - timedelta(minutes=50),
        window_start=window[0],
        window_end=window[1],
    )
    job_id = f"job-{agent}"
    states = [("QUEUED", None, ""), ("RUNNING", 0.5, "iteration 3 of 6")]
    states.append(("SUCCEEDED", 1.0, "published student v2"))
    figures = {"heldout_candidate_reward": 0.71, "heldout_current_reward": 0.55}
    figures["non_degradation"] = 0.98
    for seq, (state, progress, message) in enumerate(states, 1):
        events.append(
            JobStatus(
                job_id=job_id,
                trigger_id=trigger.trigger_id,
                kind="gepa",
                agent_id=agent,
                state=state,  # type: ignore[arg-type]
                seq=seq,
                updated_at=now - timedelta(minutes=45 - 10 * seq),
                progress=progress,
                message=message,
                metrics=figures if state == "SUCCEEDED" else {},
                result_version=2 if state == "SUCCEEDED" else None,
                worker="host-gepa-0",
            )
        )
    events += [
        trigger,
        Alert(
            agent_id=agent,
            kind="reward_drop",
            state="firing",
            baseline_median=0.8,
            mad=0.05,
            recent_value=0.3,
            threshold=0.58,
            count=20,
            message=f"reward of {agent}: median 0.300 of the last 20 traces",
        ),
    ]
    StoreWriter(client).write(events)
    rewards = (edited.reward, revised.reward)
    return Seeded(agent, edited.trace_id, low.trace_id, job_id, trigger.trigger_id, window, rewards)


def prompt_lineage(agent: str, seeded: Seeded) -> list[PromptVersion]:
    """Two student versions: v1 by hand, v2 from the seeded job (its lineage)."""
    first = PromptVersion(
        agent_id=agent,
        role="student",
        version=1,
        parent_version=0,
        text="Answer with the number only.\nBe brief.",
        source="manual",
    )
    second = PromptVersion(
        agent_id=agent,
        role="student",
        version=2,
        parent_version=1,
        text="Answer with the number only.\nShow the sum first, then the number.",
        source="gepa",
        job_id=seeded.job_id,
        trigger_id=seeded.trigger_id,
        window_start=seeded.window[0],
        window_end=seeded.window[1],
        heldout_reward=0.71,
        baseline_reward=0.55,
        non_degradation=0.98,
    )
    return [first, second]


def checkpoint_lineage(agent: str) -> list[CheckpointEvent]:
    """Two student checkpoints: v1 from the base model, v2 its child."""
    return [
        CheckpointEvent(
            agent_id=agent,
            role="student",
            version=version,
            parent_version=version - 1,
            uri=f"file:///checkpoints/{agent}/v{version}",
            base_model="SmolLM2-135M-Instruct",
            sha256={"model.safetensors": f"{version:02d}" * 32},
            source="grpo",
        )
        for version in (1, 2)
    ]
