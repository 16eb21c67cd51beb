"""RIM calibration end to end on the real broker and store, with the real worker processes
(`atlas worker rewards`, `atlas worker sink`, `atlas worker rim`) and the CLI: a scripted agent's
traces get simulated users' feedback and are stored scored by RIM v0; `atlas retrain rim`
publishes v1 (signed, stored with its lineage); the reward worker that is already running
switches to it, so new traces land in ClickHouse with rim_version 1; `atlas replay
--rim-version 0` re-scores them with the configured judges again."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from atlas.settings import PROJECT_CONFIGS, Settings
from atlas.simulation import ScriptedAgent, SimulatedUser
from consumers.jobs import TERMINAL, job_id_for, read_job_states
from rim.calibration import RIM_ROLE, Calibration
from rim.config import load_rim_config
from runtime.producer import EventProducer
from runtime.tasks import generate
from schemas.codec import AvroCodec
from schemas.models import JobStatus, RetrainTrigger
from schemas.topics import TRIGGERS
from store.client import connect
from store.queries import prompt_history
from tests.workers import WorkerProcess, eventually, skip_to_end, stack_cli

pytestmark = pytest.mark.integration

LABELLED, AFTER = 200, 20  # traces with feedback to calibrate on; traces sent afterwards
# An agent mostly right but wordy: users edit what configs/rim.yaml's judges score 0.8, so a
# calibration helps by far more than the gate's margin whichever traces are held out (40
# random splits offline: held-out MAE 0.07-0.20 lower, kappa 0.34-0.79 higher).
CORRECT = {"arithmetic": 0.9, "extraction": 0.95}
BARE = {"arithmetic": 0.3, "extraction": 0.3}


def produce(kafka_config: dict[str, str], agent: str, n: int, seed: int) -> list[str]:
    """``n`` scripted traces of ``agent``, each followed by its simulated user's feedback."""
    scripted, user = ScriptedAgent(CORRECT, BARE, seed), SimulatedUser(0.1, seed)
    tasks = [t for f in ("arithmetic", "extraction") for t in generate(f, "test", n // 2, seed)]
    trace_ids = []
    with EventProducer(kafka_config) as producer:
        for task in tasks:
            event = scripted.interaction(agent, task)
            producer.record_interaction(event)
            user.react(task, event, producer)
            trace_ids.append(event.trace_id)
    return trace_ids


def versions_stored(store: Client, trace_ids: list[str]) -> list[tuple[int, int, int]]:
    """(rim_version, rows, traces) of these traces' stored revisions with feedback merged."""
    rows = store.query(
        "SELECT rim_version, count(), uniqExact(trace_id) FROM scored_traces FINAL"
        " WHERE trace_id IN {ids:Array(String)} AND feedback_count > 0"
        " GROUP BY rim_version ORDER BY rim_version",
        parameters={"ids": trace_ids},
    ).result_rows
    return [tuple(r) for r in rows]


def test_a_calibration_is_published_followed_by_a_running_worker_and_stored(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    agent = f"calib-{uuid.uuid4().hex[:8]}"
    store = connect(stack_settings.store())
    cli = stack_cli(stack_settings)
    skip_to_end(kafka_config, "atlas-rim", TRIGGERS)  # earlier tests' triggers are not ours
    rewards = WorkerProcess(stack_settings, "rewards", tmp_path)
    sink = WorkerProcess(stack_settings, "sink", tmp_path)
    rim = WorkerProcess(stack_settings, "rim", tmp_path)
    try:
        eventually(lambda: b" ready" in rewards.log.read_bytes(), 120, "the reward worker")
        before = produce(kafka_config, agent, LABELLED, seed=11)
        eventually(
            lambda: versions_stored(store, before) == [(0, LABELLED, LABELLED)],
            180,
            "the labelled traces in the store, scored by rim v0",
            interval=1.0,
        )

        trigger_id = cli("retrain", "rim", "--agent", agent, "--since", "1h").strip()
        job_id = job_id_for(
            RetrainTrigger(trigger_id=trigger_id, kind="rim", agent_id=agent, reason="")
        )

        def finished() -> JobStatus | None:
            status = read_job_states(kafka_config, AvroCodec()).get(job_id)
            return status if status is not None and status.state in TERMINAL else None

        done = eventually(finished, 180, "the calibration job to finish", interval=1.0)
        assert done.state == "SUCCEEDED", done.message
        print(f"\n[calibration-e2e] {done.message}")
        assert done.result_version == 1 and done.message.startswith("published rim v1: ")
        figures = done.metrics
        assert figures["heldout_candidate_mae"] < figures["heldout_current_mae"] - 0.01
        assert figures["heldout_current_n"] >= 10 and figures["labelled_traces"] == LABELLED

        # the version, stored by the sink with its lineage
        (version,) = eventually(
            lambda: prompt_history(store, agent, RIM_ROLE), 60, "rim v1 in prompt_versions"
        )
        assert (version.version, version.source, version.job_id) == (1, "calibration", job_id)
        calibration = Calibration.from_text(version.text)
        assert "SUCCEEDED" in cli("jobs", "show", job_id)
        listed = cli("prompts", "list", "--agent", agent, "--role", "rim")
        assert "│ rim │ 1 * │ 0 │ calibration │" in listed and job_id in listed, listed
        eventually(
            lambda: b"scoring with rim v1" in rewards.log.read_bytes(),
            60,
            "the running reward worker to switch to rim v1",
        )

        after = produce(kafka_config, agent, AFTER, seed=12)
        eventually(
            lambda: versions_stored(store, after) == [(1, AFTER, AFTER)],
            120,
            "the new traces in the store, scored by rim v1",
            interval=1.0,
        )
        # every revision's reward is the calibrated judges' score, merged with the human's
        hw = load_rim_config(PROJECT_CONFIGS).human_weight
        judged = {calibration.mapped(s) for s in _weighted_levels(calibration)}
        rows = store.query(
            "SELECT reward, human_score FROM scored_traces FINAL"
            " WHERE trace_id IN {ids:Array(String)} AND rim_version = 1",
            parameters={"ids": after},
        ).result_rows
        assert len(rows) >= AFTER
        for reward, human in rows:
            expected = judged if human is None else {hw * human + (1 - hw) * j for j in judged}
            assert min(abs(reward - e) for e in expected) < 1e-9, (reward, human, expected)

        replayed = cli("replay", "--since", "1h", "--agent", agent, "--rim-version", "0")
        assert f"{LABELLED + AFTER} trace(s) sent for re-scoring" in replayed
        eventually(
            lambda: (0, AFTER, AFTER) in versions_stored(store, after),
            120,
            "the new traces re-scored with rim v0",
            interval=1.0,
        )

        # one command rolls the calibration back (to v0's weights, as v2); workers follow
        rolled = cli("prompts", "rollback", "--agent", agent, "--role", "rim")
        assert f"published {agent}/rim v2 (rollback)" in rolled
        eventually(
            lambda: b"scoring with rim v2" in rewards.log.read_bytes(), 60, "rim v2 followed"
        )
    finally:
        rim.stop()
        rewards.stop()
        sink.stop()


def _weighted_levels(calibration: Calibration) -> set[float]:
    """Every weighted judge score a trace here can have: reference_match and format score 0 or
    1 (tool_success abstains), so the mean is one of a few values."""
    w_ref = calibration.weights.get("reference_match", 0.0)
    w_fmt = calibration.weights.get("format", 0.0)
    levels = {0.0}
    for ref in (0.0, 1.0):
        for fmt in (0.0, 1.0):
            total = w_ref + w_fmt
            if total > 0:
                levels.add((w_ref * ref + w_fmt * fmt) / total)
    return levels
