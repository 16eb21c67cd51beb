"""A learning job's candidate goes through a canary (issue 17, item 2): GEPA publishes what
passed the gate under the canary label on a share of tasks, not as production, and a second
candidate during that rollout queues behind it (``when_canary_runs: queue``), numbered after
it; the rollout controller starts it once the running one is decided."""

from __future__ import annotations

import uuid

from atlas.settings import Settings
from runtime.prompts import PromptSubscriber, StaticPrompts
from runtime.rollout import started
from schemas.topics import PROMPTS
from tests.fakes import ScriptedTaskWorld
from tests.test_gepa_jobs import SEEDS, _cli, _finished_job, _start_worker, _store_traces, sink
from trainer.gepa_config import GepaConfig

__all__ = ["sink"]  # the fixture, shared with test_gepa_jobs


def test_a_passed_candidate_runs_as_a_canary_and_the_next_queues_behind_it(
    stack_settings: Settings, sink: None
) -> None:
    agent = f"canary-{uuid.uuid4().hex[:8]}"
    _store_traces(stack_settings, agent)
    config = GepaConfig(budget=30, eval_mode="auto", canary_share=0.25, when_canary_runs="queue")
    stop, thread = _start_worker(stack_settings, ScriptedTaskWorld(), config)
    kafka = stack_settings.kafka_config()
    retrain = ("retrain", "gepa", "--agent", agent, "--since", "1h", "--budget", "30")
    try:
        with PromptSubscriber(kafka, StaticPrompts(SEEDS)).start() as prompts:
            _cli(stack_settings, *retrain)
            first = _finished_job(stack_settings, agent)
            assert first.state == "SUCCEEDED", first.message
            assert "as canary on 25% of tasks" in first.message
            assert prompts.snapshot(agent)["student"].version == 0  # production unchanged
            canary = prompts.canaries(agent)["student"]
            assert (canary.version, canary.traffic_share) == (1, 0.25) and canary.rollout_id
            _cli(stack_settings, *retrain)
            second = _finished_job(stack_settings, agent, exclude={first.job_id})
            assert second.state == "SUCCEEDED", second.message
            assert "as queued on 25% of tasks" in second.message
            labels = {label: v.version for (_, label), v in prompts.labels(agent).items()}
            assert labels == {"canary": 1, "queued": 2}  # numbered after the canary
            queued = prompts.labelled(agent, "queued")["student"]
    finally:
        stop.set()
        thread.join(30)
    next_canary, (topic, key) = started(queued)
    assert (next_canary.label, next_canary.version, next_canary.traffic_share) == (
        "canary",
        2,
        0.25,
    )
    assert next_canary.rollout_id not in (None, canary.rollout_id)
    assert (topic, key) == (PROMPTS, f"{agent}/student@queued".encode())
