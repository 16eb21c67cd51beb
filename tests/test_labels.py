"""Labelled prompt versions and the agent's side of a canary rollout (issue 17, items 1-2):
labels live on the prompts topic under ``agent/role@label`` (PromptVersion v4), followers keep
each label and drop it on a tombstone, a canary splits an agent's tasks by a hash of the trace
and rollout ids, and every InteractionEvent records its arm and both versions (v3)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from atlas.settings import Settings
from runtime.backends.base import Message
from runtime.core import Runtime
from runtime.producer import EventProducer
from runtime.prompts import PromptSubscriber, StaticPrompts
from runtime.rollout import arm_of, with_canaries
from runtime.tasks import Task
from schemas.codec import AvroCodec
from schemas.models import PromptVersion, RolloutArm
from schemas.topics import key_of, label_of_key, version_key
from store.client import connect
from tests.fakes import ScriptedBackend
from tests.workers import WorkerProcess, eventually, stack_cli

SEEDS = StaticPrompts({"student": "seed student", "teacher": "seed teacher"})
TASK = Task("What is 2 + 2?", "t", None, "4", "integer")


def version(n: int, label: str = "production", share: float | None = None) -> PromptVersion:
    canary = {"rollout_id": "r-1", "traffic_share": share} if share is not None else {}
    return PromptVersion(
        agent_id="a", role="student", version=n, text=f"student v{n}", source="manual",
        label=label, **canary,
    )  # fmt: skip


def echo_system(conversation: Sequence[Message]) -> str:
    return conversation[0]["content"]  # the prompt text this call really used


def test_labels_name_their_keys_and_a_canary_carries_its_rollout() -> None:
    assert key_of(version(1)) == b"a/student"
    assert key_of(version(2, "canary", 0.1)) == b"a/student@canary"
    assert key_of(version(3, "staging")) == b"a/student@staging"
    assert version_key("a", "student", "staging") == "a/student@staging"
    # the label is after the role; an agent id may hold '@' or '/'
    assert [label_of_key(k) for k in ("a/student", "x@y/student", "a/b/student@canary")] == [
        "production", "production", "canary",
    ]  # fmt: skip
    assert label_of_key("a/student@Not-A-Label") == "production"
    for bad in (
        {"label": "canary"},  # a canary without its rollout
        {"label": "staging", "rollout_id": "r", "traffic_share": 0.1},
        {"label": "canary", "rollout_id": "r", "traffic_share": 1.0},
        {"label": "Canary!"},
    ):
        with pytest.raises(ValueError):
            version(1).model_validate({**version(1).model_dump(), **bad})
    codec = AvroCodec()
    canary = version(2, "canary", 0.25)
    assert codec.decode(codec.encode(canary), PromptVersion) == canary


def test_a_follower_keeps_each_label_and_a_tombstone_removes_only_its_own() -> None:
    codec = AvroCodec()
    follower = PromptSubscriber({}, SEEDS, codec)
    for v in (version(1), version(2, "canary", 0.1), version(3, "staging")):
        follower._apply(key_of(v), codec.encode(v))
    assert follower.snapshot("a")["student"].version == 1
    assert follower.canaries("a")["student"].version == 2
    assert {label: v.version for (_, label), v in follower.labels("a").items()} == {
        "production": 1, "canary": 2, "staging": 3,
    }  # fmt: skip
    # a message whose key does not name its label is skipped, not applied under either
    follower._apply(b"a/student", codec.encode(version(9, "canary", 0.5)))
    assert follower.skipped == 1 and follower.canaries("a")["student"].version == 2
    follower._apply(b"a/student@canary", None)
    assert follower.canaries("a") == {} and follower.snapshot("a")["student"].version == 1
    assert follower.labelled("a", "staging")["student"].version == 3


def test_the_split_is_deterministic_close_to_the_share_and_independent_of_the_task() -> None:
    arms = Counter(arm_of(f"trace-{i}", "r-1", 0.1) for i in range(20_000))
    assert 0.09 < arms["canary"] / 20_000 < 0.11
    assert all(
        arm_of(f"trace-{i}", "r-1", 0.1) == arm_of(f"trace-{i}", "r-1", 0.1) for i in range(50)
    )
    other = [arm_of(f"trace-{i}", "r-2", 0.1) for i in range(20_000)]
    both = sum(a == o == "canary" for a, o in zip(
        (arm_of(f"trace-{i}", "r-1", 0.1) for i in range(20_000)), other, strict=True
    ))  # fmt: skip
    assert both < 0.02 * 20_000  # rollouts split independently (about 1%)
    production = {"student": version(1)}
    versions, rollouts = with_canaries(production, {"student": version(2, "canary", 0.5)}, "t-1")
    assert versions["student"].version == (2 if rollouts[0].arm == "canary" else 1)
    assert rollouts == [
        RolloutArm(role="student", rollout_id="r-1", arm=rollouts[0].arm, canary_version=2,
                   production_version=1)
    ]  # fmt: skip
    # a canary already promoted, or of a role never published, takes no part
    assert with_canaries(production, {"student": version(1, "canary", 0.5)}, "t") == (
        production, [],
    )  # fmt: skip
    assert with_canaries({}, {"student": version(2, "canary", 0.5)}, "t") == ({}, [])


def test_the_runtime_runs_each_task_on_its_arm_and_records_it() -> None:
    class Labelled(StaticPrompts):
        def snapshot(self, agent_id: str) -> dict[str, PromptVersion]:
            return {**super().snapshot(agent_id), "student": version(1)}

        def canaries(self, agent_id: str) -> dict[str, PromptVersion]:
            return {"student": version(2, "canary", 0.3)}

    student = ScriptedBackend("s", echo_system)
    runtime = Runtime("a", student, ScriptedBackend("t", lambda _c: "PASS"), Labelled(SEEDS.texts))
    events = runtime.run_many([TASK] * 200, mode="auto")
    canary = [e for e in events if e.rollouts[0].arm == "canary"]
    assert 0.2 < len(canary) / 200 < 0.4
    for event in events:
        [arm] = event.rollouts
        used = 2 if arm.arm == "canary" else 1
        assert event.final_answer == f"student v{used}"  # the version it ran on
        assert {r.role: r.version for r in event.prompt_versions}["student"] == used
        assert arm.arm == arm_of(event.trace_id, "r-1", 0.3)
        assert (arm.canary_version, arm.production_version) == (2, 1)
        # a canary task also asks production's student, in a shadow call that is no step
        assert event.production_answer == ("student v1" if arm.arm == "canary" else None)
        assert [s.kind for s in event.steps] == ["baseline"]
    plain = Runtime("a", student, student, SEEDS).run(TASK, "auto")
    assert plain.rollouts == [] and plain.production_answer is None


def test_a_teacher_canary_asks_production_for_no_shadow_answer() -> None:
    class TeacherCanary(StaticPrompts):
        def snapshot(self, agent_id: str) -> dict[str, PromptVersion]:
            teacher = version(1).model_copy(update={"role": "teacher"})
            return {**super().snapshot(agent_id), "teacher": teacher}

        def canaries(self, agent_id: str) -> dict[str, PromptVersion]:
            return {"teacher": version(2, "canary", 0.5).model_copy(update={"role": "teacher"})}

    student = ScriptedBackend("s", echo_system)
    runtime = Runtime(
        "a", student, ScriptedBackend("t", lambda _c: "PASS"), TeacherCanary(SEEDS.texts)
    )
    events = runtime.run_many([TASK] * 20, mode="paired")
    assert "canary" in {e.rollouts[0].arm for e in events}
    # the un-taught answer does not involve the teacher: nothing to compare
    assert all(e.production_answer is None for e in events)


@pytest.mark.integration
def test_operators_label_a_version_and_a_running_agent_splits_its_traffic(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """On the real broker and store, with the CLI an operator types: two published versions,
    v1 labelled canary on 30% of tasks and v2 staging; `prompts list` shows the labels; a
    following agent runs each task on its arm; removing the canary stops the split; the reward
    worker and the sink store each trace's arm; bad requests are one-line refusals."""
    agent = f"label-{uuid.uuid4().hex[:10]}"
    cli = stack_cli(stack_settings)

    sink = WorkerProcess(stack_settings, "sink", tmp_path)
    store = connect(stack_settings.store())
    try:
        for text in ("Answer in one word.", "Answer with the number only."):
            cli("prompts", "set", "--agent", agent, "--text", text, "--force")
        label = ("prompts", "label", "--agent", agent)
        assert "no stored version" in cli(*label, "--label", "staging", "--version", "7", code=2)
        stored = "SELECT count() FROM prompt_versions FINAL WHERE agent_id = {a:String}"
        eventually(
            lambda: store.query(stored, parameters={"a": agent}).result_rows == [(2,)],
            60, "both versions stored", interval=0.5,
        )  # fmt: skip
        assert "another version in production" in cli(
            *label, "--label", "canary", "--version", "2", code=2
        )
        assert "labelled" in cli(*label, "--label", "staging", "--version", "2")
        done = cli(*label, "--label", "canary", "--version", "1", "--share", "0.3")
        assert f"labelled {agent}/student v1 canary on 30.0% of tasks" in done
        assert "one at a time" in cli(*label, "--label", "canary", "--version", "1", code=2)
        listed = cli("prompts", "list", "--agent", agent)
        assert "canary 30.0%" in listed and "production, staging" in listed
        with PromptSubscriber(stack_settings.kafka_config(), SEEDS).start() as prompts:
            student = ScriptedBackend("s", echo_system)
            runtime = Runtime(agent, student, student, prompts)
            events = runtime.run_many([TASK] * 60, mode="auto")
            arms = Counter(e.rollouts[0].arm for e in events)
            assert 0 < arms["canary"] < 40 and arms["production"] > 20
            for event in events:
                expected = "Answer in one word." if event.rollouts[0].arm == "canary" else (
                    "Answer with the number only."
                )  # fmt: skip
                assert event.final_answer == expected
            cli(*label, "--label", "canary", "--remove")
            eventually(lambda: prompts.canaries(agent) == {}, 30, "the canary removed", 0.2)
            assert runtime.run(TASK, "auto").rollouts == []
        assert "canary" not in cli("prompts", "list", "--agent", agent)
        assert "has no version labelled canary" in cli(
            *label, "--label", "canary", "--remove", code=2
        )
        assert "production is what agents use" in cli(
            *label, "--label", "production", "--version", "1", code=2
        )
        with EventProducer(stack_settings.kafka_config("agent")) as producer:
            for event in events:
                producer.record_interaction(event)
        rewards = WorkerProcess(stack_settings, "rewards", tmp_path)
        try:
            by_arm = (
                "SELECT tupleElement(rollouts[1], 'arm') AS arm, count() FROM latest_traces"
                " WHERE agent_id = {a:String} GROUP BY arm ORDER BY arm"
            )
            eventually(
                lambda: store.query(by_arm, parameters={"a": agent}).result_rows
                == sorted(arms.items()),
                120, "the arms stored with the scored traces", interval=1,
            )  # fmt: skip
        finally:
            rewards.stop()
    finally:
        sink.stop()
