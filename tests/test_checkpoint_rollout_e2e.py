"""A checkpoint canary end to end on the real broker and store, with the real local model
(issue 17): `atlas checkpoints label` puts a stored checkpoint under the canary label, an
agent that follows checkpoints loads it beside production (the base model) and runs half its
tasks on it, and `atlas worker rollouts` rolls it back from live rewards; the agent drops it,
the decision (kind checkpoint) is in ClickHouse, and every trace names the model it ran on."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import pytest

from atlas.commands.common import publish_as_learner
from atlas.settings import Settings
from runtime.backends.local import LocalBackend
from runtime.checkpoints import CheckpointFollower, HotLoadingBackend, sha256_of
from runtime.core import Runtime
from runtime.producer import EventProducer
from runtime.prompts import StaticPrompts
from runtime.tasks import generate
from runtime.turns import GenerationLimits
from schemas.models import CANARY, CheckpointEvent
from store.client import connect
from tests.fakes import ScriptedBackend
from tests.test_rollout_e2e import fast_configs, statuses
from tests.workers import WorkerProcess, eventually, stack_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def scrambled_copy(model_dir: Path, target: Path) -> Path:
    """The model in ``model_dir`` with its token embeddings' rows shuffled (tied to the output
    layer, so every token reads and writes as another): a loadable checkpoint that answers
    nonsense."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, target)
    weights = load_file(target / "model.safetensors")
    name = next(n for n in weights if n.endswith("embed_tokens.weight"))
    generator = torch.Generator().manual_seed(0)
    weights[name] = weights[name][torch.randperm(weights[name].shape[0], generator=generator)]
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_a_broken_checkpoint_canary_is_rolled_back_and_dropped_by_the_agent(
    stack_settings: Settings, tmp_path: Path, model_dir: Path
) -> None:
    cli = stack_cli(stack_settings)
    agent = f"ck-{uuid.uuid4().hex[:8]}"
    env = {"ATLAS_CONFIG_DIR": str(fast_configs(tmp_path))}
    workers = [WorkerProcess(stack_settings, k, tmp_path) for k in ("rewards", "sink")]
    workers.append(WorkerProcess(stack_settings, "rollouts", tmp_path, env))
    folder = scrambled_copy(model_dir, tmp_path / "v1")
    stored = CheckpointEvent(
        agent_id=agent, role="student", version=1, uri=f"file://{folder}",
        base_model="SmolLM2-135M-Instruct", source="manual", label="staging",
        sha256={p.name: sha256_of(p) for p in folder.iterdir() if p.is_file()},
    )  # fmt: skip
    publish_as_learner(stack_settings, [stored])  # stored, and only a bookmark: not in use
    store = connect(stack_settings.store())
    sql = "SELECT count() FROM checkpoints FINAL WHERE agent_id = {a:String}"
    eventually(
        lambda: store.query(sql, parameters={"a": agent}).result_rows == [(1,)],
        60, "the checkpoint stored", interval=0.5,
    )  # fmt: skip
    cli("checkpoints", "label", "--agent", agent, "--version", "1", "--label", "canary",
        "--share", "0.5")  # fmt: skip
    assert "canary 50.0%" in cli("checkpoints", "list", "--agent", agent)
    follower = CheckpointFollower(stack_settings.kafka_config()).start()
    student = HotLoadingBackend(
        LocalBackend(model_dir, max_batch=8), follower, agent, "student",
        lambda canary: LocalBackend(canary, max_batch=8),
    )  # fmt: skip
    runtime = Runtime(
        agent, student, ScriptedBackend("t", lambda _c: "PASS"),
        StaticPrompts({"student": "Answer with the value only.", "teacher": "Review."}),
        limits=GenerationLimits(answer_tokens=24),
    )  # fmt: skip
    tasks = iter(generate("extraction", "test", 400, seed=3))
    try:
        eventually(lambda: follower.labelled(agent, CANARY), 30, "the canary label")
        rollout_id = follower.labelled(agent, CANARY)["student"].rollout_id or ""
        ran, deadline = 0, time.monotonic() + 420
        while follower.labelled(agent, CANARY) and time.monotonic() < deadline:
            events = runtime.run_many([next(tasks) for _ in range(8)], mode="auto")
            with EventProducer(stack_settings.kafka_config("agent")) as producer:
                for event in events:
                    producer.record_interaction(event)
            ran += len(events)
        [decided] = [
            s for s in statuses(stack_settings.kafka_config(), rollout_id) if s.state != "running"
        ]  # fmt: skip
        print(f"\n[checkpoint-rollout-e2e] after {ran} tasks: {decided.state}: {decided.reason}")
        assert (decided.state, decided.kind) == ("rolled_back", "checkpoint")
        assert decided.canary_mean is not None and decided.production_mean is not None
        assert decided.canary_mean < decided.production_mean
        student.between_tasks()
        assert student.rollout() is None and student.canary_backend is None  # dropped
        assert student.version is None  # production still runs the base model
        assert runtime.run(next(tasks), "auto").rollouts == []
        rows = "SELECT state, kind FROM rollout_statuses FINAL WHERE rollout_id = {r:String}"
        eventually(
            lambda: ("rolled_back", "checkpoint")
            in store.query(rows, parameters={"r": rollout_id}).result_rows,
            60, "the decision in ClickHouse", interval=1,
        )  # fmt: skip
        arms = (  # the rollout's kind is its status's; each trace names its arm and model
            "SELECT tupleElement(r, 'arm') AS arm, groupUniqArray(models['student'])"
            " FROM latest_traces ARRAY JOIN rollouts AS r"
            " WHERE agent_id = {a:String} GROUP BY arm ORDER BY arm"
        )
        assert store.query(arms, parameters={"a": agent}).result_rows == [
            ("canary", [f"{model_dir.name}@v1"]),
            ("production", [model_dir.name]),
        ]
    finally:
        for worker in reversed(workers):
            worker.stop()
        follower.close()
