"""Canary rollouts of checkpoints (issue 17): a checkpoint published under the canary label is
loaded beside production by agents that follow checkpoints, each task runs on its arm's model
and records the rollout (kind checkpoint), production's shadow answer is asked of production's
model, and the controller's decision publishes on the checkpoints topic, signed; a promotion
swaps the canary's model in without loading it again."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.backends.base import GenerationParams, Message
from runtime.checkpoints import CheckpointFollower, HotLoadingBackend
from runtime.core import Runtime
from runtime.prompts import StaticPrompts
from runtime.rollout import arm_of, promotion
from runtime.tasks import Task
from schemas.codec import AvroCodec
from schemas.models import CheckpointEvent, RolloutArm
from schemas.rollouts import RolloutStatus
from schemas.signing import Signer, Verifier
from schemas.topics import CHECKPOINTS, PROMPTS, ROLLOUTS, key_of
from streams.engine import Batch
from streams.rollout import RolloutObservation
from streams.rollout_config import RolloutConfig
from streams.rollout_stats import RolloutTestConfig
from streams.rollout_stream import CanaryFollower, rollout_stream
from tests.fakes import Msg, ScriptedBackend

AGENT = "agent-ck"
TASK = Task("What is 2 + 2?", "t", "arithmetic", "4", "integer")
SEEDS = StaticPrompts({"student": "seed", "teacher": "seed"})


class FakeModel(ScriptedBackend):
    """A local model that always answers ``answer`` and records what it loads."""

    def __init__(self, name: str, answer: str, model_dir: Path):
        super().__init__(name, lambda _c: answer)
        self.model_dir, self.loads = model_dir, []

    def load(self, folder: Path) -> None:
        self.loads.append(folder)
        self.model_dir = folder

    def complete_each(
        self, conversations: Sequence[Sequence[Message]], params: Sequence[GenerationParams]
    ) -> list:  # type: ignore[type-arg]
        return self.complete(conversations, params[0])


def checkpoint(tmp_path: Path, version: int, **label: object) -> CheckpointEvent:
    folder = tmp_path / f"v{version}"
    folder.mkdir(exist_ok=True)
    weights = folder / "model.safetensors"
    weights.write_bytes(f"weights {version}".encode())
    return CheckpointEvent(
        agent_id=AGENT, role="student", version=version, uri=f"file://{folder}",
        base_model="base", sha256={weights.name: hashlib.sha256(weights.read_bytes()).hexdigest()},
        source="grpo", **label,
    )  # fmt: skip


def publish(follower: CheckpointFollower, event: CheckpointEvent | None, key: bytes) -> None:
    follower._apply(key, None if event is None else AvroCodec().encode(event))


def test_an_agent_runs_each_task_on_its_arms_checkpoint_and_swaps_on_promotion(
    tmp_path: Path,
) -> None:
    follower = CheckpointFollower({})  # never started: events are applied by hand
    production = FakeModel("base", "4", tmp_path)
    loaded: list[FakeModel] = []

    def load_canary(folder: Path) -> FakeModel:
        loaded.append(FakeModel("canary", "5", folder))
        return loaded[-1]

    student = HotLoadingBackend(production, follower, AGENT, "student", load_canary)  # type: ignore[arg-type]
    teacher = ScriptedBackend("t", lambda _c: "PASS")
    runtime = Runtime(AGENT, student, teacher, SEEDS)
    assert all(e.rollouts == [] for e in runtime.run_many([TASK] * 4, "auto"))
    canary = checkpoint(tmp_path, 1, label="canary", rollout_id="r-ck", traffic_share=0.5)
    publish(follower, canary, key_of(canary))
    events = runtime.run_many([TASK] * 60, "auto")
    assert len(loaded) == 1 and production.loads == []
    arms = [e.rollouts[0] for e in events]
    assert {(a.kind, a.canary_version, a.production_version) for a in arms} == {
        ("checkpoint", 1, 0)  # production runs the base model: version 0
    }
    assert 15 < sum(a.arm == "canary" for a in arms) < 45
    for event, arm in zip(events, arms, strict=True):
        assert arm.arm == arm_of(event.trace_id, "r-ck", 0.5)
        on_canary = arm.arm == "canary"
        assert event.final_answer == ("5" if on_canary else "4")
        assert event.models["student"] == ("base@v1" if on_canary else "base")
        # production's model answers the shadow question on the canary's tasks
        assert event.production_answer == ("4" if on_canary else None)
    promoted, (topic, label_key) = promotion(canary)
    assert topic == CHECKPOINTS
    publish(follower, promoted, key_of(promoted))
    events = runtime.run_many([TASK] * 8, "auto")  # before the label's removal arrives
    assert len(loaded) == 1 and student.canary_backend is None  # swapped in, not loaded again
    publish(follower, None, label_key)
    events += runtime.run_many([TASK] * 8, "auto")
    assert [e.final_answer for e in events] == ["5"] * 16 and production.loads == []
    assert all(e.rollouts == [] for e in events)  # the canary's model is production's now
    assert student.version == 1 and student.model_name == "base@v1"
    assert student.canary_backend is None


def test_a_canary_that_fails_its_checksum_is_not_run_or_retried(tmp_path: Path) -> None:
    follower = CheckpointFollower({})
    calls: list[Path] = []
    student = HotLoadingBackend(
        FakeModel("base", "4", tmp_path), follower, AGENT, "student",  # type: ignore[arg-type]
        lambda folder: calls.append(folder),  # type: ignore[arg-type,func-returns-value]
    )  # fmt: skip
    canary = checkpoint(tmp_path, 1, label="canary", rollout_id="r-bad", traffic_share=0.5)
    (tmp_path / "v1" / "model.safetensors").write_bytes(b"tampered")
    publish(follower, canary, key_of(canary))
    for _ in range(3):
        student.between_tasks()
    assert calls == [] and student.rollout() is None
    runtime = Runtime(AGENT, student, ScriptedBackend("t", lambda _c: "PASS"), SEEDS)
    assert runtime.run(TASK, "auto").rollouts == []  # no arm while nothing runs the canary


def observation(arm: str, reward: float, trace: str) -> RolloutObservation:
    return RolloutObservation(
        agent_id=AGENT, trace_id=trace, revision=1, reward=reward, at=1000.0,
        arms=[RolloutArm(role="student", rollout_id="r-ck", arm=arm, canary_version=1,  # type: ignore[arg-type]
                         production_version=0, kind="checkpoint")],
    )  # fmt: skip


def test_the_controller_promotes_a_checkpoint_on_the_checkpoints_topic_signed(
    tmp_path: Path,
) -> None:
    codec = AvroCodec()
    signer = Signer(Ed25519PrivateKey.generate())
    canary = checkpoint(tmp_path, 1, label="canary", rollout_id="r-ck", traffic_share=0.5)
    checkpoints = CanaryFollower({}, codec, kind="checkpoint")
    checkpoints._apply(key_of(canary), codec.encode(canary))
    config = RolloutConfig(test=RolloutTestConfig(min_samples=20, tuned_samples=50))
    table, handle = rollout_stream(config, codec, CanaryFollower({}, codec), signer, checkpoints)
    table.partitions[0] = {}
    rng = random.Random(5)
    messages = []
    for i in range(200):
        arm = "canary" if i % 2 else "production"
        reward = float(rng.random() < (0.9 if arm == "canary" else 0.2))
        messages.append(Msg(observation(arm, reward, f"t-{i}").to_bytes(), AGENT.encode(), i))
    batch = Batch()
    handle(messages, batch)  # type: ignore[arg-type]
    decided = [
        status
        for o in batch.outputs
        if o.topic == ROLLOUTS
        and (status := codec.decode(o.value or b"", RolloutStatus)).state != "running"
    ]
    assert [(s.state, s.kind) for s in decided] == [("promoted", "checkpoint")]
    sent = [o for o in batch.outputs if o.topic in (PROMPTS, CHECKPOINTS)]
    assert [(o.topic, o.key, o.value is None) for o in sent] == [
        (CHECKPOINTS, f"{AGENT}/student".encode(), False),
        (CHECKPOINTS, f"{AGENT}/student@canary".encode(), True),
    ]
    production = codec.decode(sent[0].value or b"", CheckpointEvent)
    assert (production.version, production.label, production.uri) == (1, "production", canary.uri)
    verifier = Verifier(signer.public_key())
    for o in sent:  # agents that verify checkpoints accept both (raises if not)
        verifier.check(CHECKPOINTS, o.key, o.value, o.headers)
