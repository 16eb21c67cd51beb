"""Control flow of each mode and of the mode policy, with scripted backends."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from runtime.backends.base import Message
from runtime.core import Runtime
from runtime.policy import ModePolicy, ModePolicyConfig
from runtime.prompts import StaticPrompts
from runtime.tasks import Task
from runtime.turns import parse_verdict, withhold_answer
from tests.fakes import ScriptedBackend, last_user

TASK = Task("Tom has 3 apples and gets 4 more. How many?", "t-1", "arithmetic", "7", "integer")
PROMPTS = StaticPrompts({"student": "You are a student.", "teacher": "You are a teacher."})


def student_script(conversation: Sequence[Message]) -> str:
    text = last_user(conversation)
    if text.startswith("A reviewer judged"):
        return "The answer is 7."
    if "Write a short plan" in text:
        return "1. add the numbers"
    if "Reviewer's note" in text:
        return "I think 6."
    return "The answer is 6."


def teacher_script(verdict: str, hint: str = "Count again: 3 plus 4.") -> ScriptedBackend:
    def respond(conversation: Sequence[Message]) -> str:
        text = last_user(conversation)
        if "PASS or FAIL" in text:
            return verdict
        if "plan" in text and "point out" in text:
            return "Do not forget to add."
        return hint

    return ScriptedBackend("teacher-model", respond)


def make(teacher: ScriptedBackend, **policy: object) -> tuple[Runtime, ScriptedBackend]:
    student = ScriptedBackend("student-model", student_script)
    config = ModePolicyConfig(**policy)  # type: ignore[arg-type]
    return Runtime("agent-1", student, teacher, PROMPTS, ModePolicy(config)), student


def kinds(event: object) -> list[str]:
    return [step.kind for step in event.steps]  # type: ignore[attr-defined]


def test_auto_is_the_student_alone() -> None:
    teacher = teacher_script("FAIL")
    runtime, student = make(teacher)
    event = runtime.run(TASK, mode="auto")
    assert kinds(event) == ["baseline"]
    assert event.final_answer == event.baseline_answer == "The answer is 6."
    assert teacher.calls == 0 and student.calls == 1
    assert "teacher" not in event.models


def test_paired_pass_keeps_the_first_answer() -> None:
    runtime, _ = make(teacher_script("PASS"))
    event = runtime.run(TASK, mode="paired")
    assert kinds(event) == ["baseline", "review"]
    assert event.steps[1].verdict == "pass"
    assert event.final_answer == "The answer is 6."


def test_paired_fail_gives_guidance_and_one_retry() -> None:
    teacher = teacher_script("FAIL")
    runtime, student = make(teacher)
    event = runtime.run(TASK, mode="paired")
    assert kinds(event) == ["baseline", "review", "guidance", "retry"]
    assert event.final_answer == "The answer is 7."
    assert event.baseline_answer == "The answer is 6."
    retry_conversation = student.batches[-1][0]
    assert "Count again: 3 plus 4." in retry_conversation[-1]["content"]
    assert retry_conversation[-2] == {"role": "assistant", "content": "The answer is 6."}
    assert student.calls == 2 and teacher.calls == 2


def test_guidance_never_carries_the_reference_answer() -> None:
    teacher = teacher_script("FAIL", hint="The answer is 7, because 3 + 4 = 7.")
    runtime, student = make(teacher)
    event = runtime.run(TASK, mode="paired")
    guidance = event.steps[2]
    assert "7" not in guidance.content and guidance.verdict == "answer_withheld"
    assert "7" not in student.batches[-1][0][-1]["content"]
    assert event.metadata["guidance_answer_withheld"] == "true"


def test_coach_reviews_the_plan_then_validates() -> None:
    runtime, student = make(teacher_script("FAIL"))
    event = runtime.run(TASK, mode="coach")
    assert kinds(event) == [
        "baseline",
        "plan",
        "plan_review",
        "answer",
        "review",
        "guidance",
        "retry",
    ]
    coached = student.batches[2][0][-1]["content"]
    assert "1. add the numbers" in coached and "Do not forget to add." in coached
    assert event.final_answer == "The answer is 7."


def test_unclear_verdict_does_not_trigger_a_retry() -> None:
    runtime, _ = make(teacher_script("Hmm, let me think"))
    event = runtime.run(TASK, mode="paired")
    assert kinds(event) == ["baseline", "review"] and event.steps[1].verdict == "unclear"


def test_usage_and_versions_are_recorded() -> None:
    runtime, _ = make(teacher_script("FAIL"))
    event = runtime.run(TASK, mode="paired")
    assert event.usage.prompt_tokens == sum(s.prompt_tokens for s in event.steps) > 0
    assert event.usage.completion_tokens == sum(s.completion_tokens for s in event.steps) > 0
    assert [(p.role, p.version) for p in event.prompt_versions] == [("student", 0), ("teacher", 0)]
    assert event.models == {"student": "student-model", "teacher": "teacher-model"}
    assert event.task_family == "arithmetic" and event.reference == "7"


def test_run_many_batches_each_phase() -> None:
    teacher = teacher_script("FAIL")
    runtime, student = make(teacher)
    events = runtime.run_many([TASK] * 5, mode="paired")
    assert len(events) == 5 and len({e.trace_id for e in events}) == 5
    assert [len(b) for b in student.batches] == [5, 5]  # first answers, retries
    assert [len(b) for b in teacher.batches] == [5, 5]  # reviews, guidance


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("PASS", "pass"),
        ("fail.", "fail"),
        ("The answer is incorrect", "fail"),
        ("Correct!", "pass"),
        ("", "unclear"),
        ("maybe", "unclear"),
    ],
)
def test_parse_verdict(text: str, verdict: str) -> None:
    assert parse_verdict(text) == verdict


def test_withhold_answer_only_whole_tokens() -> None:
    assert withhold_answer("try 17 again", "7") == ("try 17 again", False)
    assert withhold_answer("it is Paris.", "paris") == ("it is [answer withheld].", True)
    assert withhold_answer("anything", None) == ("anything", False)


class Rewards:
    def __init__(self, table: dict[str, tuple[float, int]]):
        self.table = table
        self.calls = 0

    def recent_by_mode(self, agent_id: str) -> dict[str, tuple[float, int]]:
        self.calls += 1
        return self.table


def test_policy_routes_to_auto_when_teaching_does_not_pay() -> None:
    rewards = Rewards({"auto": (0.40, 50), "paired": (0.41, 50)})
    policy = ModePolicy(ModePolicyConfig(explore_rate=0.0), rewards)
    mode, reason = policy.decide("a", probe=None)
    assert mode == "auto" and "teaching does not pay" in reason
    policy.decide("a", probe=None)
    assert rewards.calls == 1  # cached


def test_policy_keeps_teaching_when_it_pays() -> None:
    rewards = Rewards({"auto": (0.30, 50), "paired": (0.60, 50)})
    assert ModePolicy(ModePolicyConfig(), rewards).decide("a", None)[0] == "paired"


def test_policy_needs_enough_samples_of_both() -> None:
    rewards = Rewards({"auto": (0.40, 5), "paired": (0.41, 50)})
    assert ModePolicy(ModePolicyConfig(explore_rate=0.0), rewards).decide("a", None)[0] == "paired"


def test_policy_measures_the_untaught_mode_it_has_too_few_samples_of() -> None:
    rewards = Rewards({"auto": (0.40, 2), "paired": (0.41, 50)})
    policy = ModePolicy(ModePolicyConfig(explore_rate=0.25, cache_seconds=100), rewards)
    decisions = [policy.decide("a", None) for _ in range(400)]
    explored = [reason for mode, reason in decisions if mode == "auto"]
    assert 60 < len(explored) < 140 and set(explored) == {"explore: measure the untaught mode"}


def test_policy_explores_a_share_of_tasks() -> None:
    rewards = Rewards({"auto": (0.40, 50), "paired": (0.40, 50)})
    policy = ModePolicy(ModePolicyConfig(explore_rate=0.5, cache_seconds=100), rewards)
    modes = [policy.decide("a", None)[0] for _ in range(200)]
    assert 60 < modes.count("paired") < 140 and modes.count("auto") > 60


def test_policy_probe_and_reward_thresholds() -> None:
    config = ModePolicyConfig(
        probe_auto_threshold=-0.2,
        probe_coach_threshold=-2.0,
        reward_coach_threshold=0.3,
        min_samples=10,
    )
    policy = ModePolicy(config, Rewards({"paired": (0.1, 40)}))
    assert policy.decide("a", -0.1)[0] == "auto"
    assert policy.decide("a", -3.0)[0] == "coach"
    assert policy.decide("a", -1.0) == ("coach", "low recent reward 0.100")
    assert ModePolicy(config).decide("a", -1.0) == ("paired", "default")


def test_the_runtime_follows_the_policy() -> None:
    rewards = Rewards({"auto": (0.5, 50), "paired": (0.5, 50)})
    teacher = teacher_script("FAIL")
    student = ScriptedBackend("student-model", student_script)
    policy = ModePolicy(ModePolicyConfig(explore_rate=0.0), rewards)
    event = Runtime("agent-1", student, teacher, PROMPTS, policy).run(TASK)
    assert event.mode == "auto" and teacher.calls == 0
    assert event.metadata["mode_reason"].startswith("teaching does not pay")


def test_logprobs_are_requested_only_when_the_policy_reads_the_probe() -> None:
    runtime, student = make(teacher_script("PASS"))
    runtime.run(TASK, mode="paired")
    assert [p.logprobs for p in student.params] == [False]
    probing, student = make(teacher_script("PASS"), probe_auto_threshold=-1.0)
    event = probing.run(TASK)
    assert [p.logprobs for p in student.params] == [True]
    assert event.mode == "auto" and event.metadata["probe"] == "-0.5000"
