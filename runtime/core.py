"""The closed-loop reasoning core: a student answers, a teacher reviews and guides, once.

Modes (chosen per task by the ``ModePolicy`` unless forced):

* ``auto``: the student's answer stands;
* ``paired``: the teacher validates the student's answer; on FAIL it gives a hint that must
  not contain the answer, and the student retries once;
* ``coach``: the student writes a plan, the teacher reviews the plan, the student answers
  with that review, then as ``paired`` (validate, one hinted retry).

The student's first, un-taught answer is always produced first: it is the capability probe
(its mean token log-probability) and the baseline against which non-degradation is measured.
On the canary arm of a student rollout (``runtime/rollout.py``), production's student is also
asked the same first question (a shadow call: never shown, not a step of the loop), so the
rollout controller compares the two un-taught answers on live tasks (``production_answer``).
A role whose backend runs a canary checkpoint beside production (``HotLoadingBackend``) runs
each task on its arm's model: a batched call is split in two, one per model.
``run_many`` runs each phase for all tasks as one batched backend call, so a batch of tasks
costs a handful of batched generations rather than several calls per task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from runtime.backends.base import ChatResult, GenerationParams, Message, ModelBackend
from runtime.memory import LookupStats, MemorySearch, Recall, recall
from runtime.policy import ModePolicy
from runtime.prompts import PromptProvider
from runtime.rollout import complete_on_arms, model_on_arm, model_rollout, task_arms
from runtime.tasks import Task
from runtime.turns import (
    COACHED,
    GUIDANCE,
    PLAN,
    PLAN_REVIEW,
    RETRY,
    REVIEW,
    GenerationLimits,
    parse_verdict,
    withhold_answer,
)
from schemas.models import (
    Arm,
    InteractionEvent,
    MemoryPolicy,
    Mode,
    PromptRef,
    PromptVersion,
    RolloutArm,
    Step,
    Usage,
    new_id,
)


@dataclass
class _Episode:
    task: Task
    prompts: dict[str, PromptVersion]
    steps: list[Step] = field(default_factory=list)
    answer: str = ""
    baseline: str = ""
    probe: float | None = None
    mode: Mode = "auto"
    reason: str = ""
    plan: str = ""
    guidance: str = ""
    leaked: bool = False
    recall: Recall = field(default_factory=Recall)
    trace_id: str = field(default_factory=new_id)
    rollouts: list[RolloutArm] = field(default_factory=list)
    model_arms: dict[str, Arm] = field(default_factory=dict)  # roles on a canary checkpoint
    # On a student canary arm: production's student version, asked the shadow question.
    shadow: PromptVersion | None = None
    shadow_recall: Recall = field(default_factory=Recall)
    production_answer: str | None = None

    def system(self, role: str) -> Message:
        return {"role": "system", "content": self.prompts[role].text}


class Runtime:
    """``Runtime(agent_id, student, teacher, prompts).run(task) -> InteractionEvent``.

    With a ``memory``, each task is first looked up in it under the memory policy of the
    student's prompt version (``memory_policy`` overrides it, for experiments), and the
    entries chosen by :func:`runtime.memory.recall` are shown to the student as solved turns
    after the version's demonstrations; the event names them in ``memory_entries``, so every
    answer says which entries it saw. ``memory_holdout`` is the share of matches from which
    each entry is held back at random (named in ``memory_held_back``): without it the stream
    cannot tell an entry's effect from its tasks' difficulty, and retires nothing."""

    def __init__(
        self,
        agent_id: str,
        student: ModelBackend,
        teacher: ModelBackend,
        prompts: PromptProvider,
        policy: ModePolicy | None = None,
        limits: GenerationLimits | None = None,
        memory: MemorySearch | None = None,
        memory_policy: MemoryPolicy | None = None,
        memory_holdout: float = 0.0,
    ):
        if not 0.0 <= memory_holdout < 1.0:
            raise ValueError(f"memory_holdout must be in [0, 1), not {memory_holdout!r}")
        self.agent_id = agent_id
        self.student = student
        self.teacher = teacher
        self.prompts = prompts
        self.policy = policy or ModePolicy()
        self.limits = limits or GenerationLimits()
        self.memory = memory
        self.memory_policy = memory_policy
        self.memory_holdout = memory_holdout

    @property
    def memory_stats(self) -> LookupStats | None:
        """The memory's lookup times (None without a memory), to set beside generation."""
        return None if self.memory is None else self.memory.stats

    def run(self, task: Task, mode: Mode | None = None) -> InteractionEvent:
        return self.run_many([task], mode)[0]

    def run_many(self, tasks: Sequence[Task], mode: Mode | None = None) -> list[InteractionEvent]:
        """Run every task through the loop; ``mode`` forces a mode instead of the policy."""
        if not tasks:
            return []
        for backend in {id(b): b for b in (self.student, self.teacher)}.values():
            hook = getattr(backend, "between_tasks", None)  # e.g. hot-loading a checkpoint
            if hook is not None:
                hook()
        # one snapshot: no task sees a mixture; a role in a canary rollout splits by trace
        production = self.prompts.snapshot(self.agent_id)
        canaries = self.prompts.canaries(self.agent_id)
        models = {
            role: pair
            for role, backend in (("student", self.student), ("teacher", self.teacher))
            if (pair := model_rollout(backend)) is not None
        }
        episodes = []
        for task in tasks:
            trace_id = new_id()
            arms = task_arms(production, canaries, models, trace_id)  # type: ignore[arg-type]
            episodes.append(
                _Episode(
                    task, arms.prompts, trace_id=trace_id, rollouts=arms.rollouts,
                    model_arms=arms.model_arms, shadow=arms.shadow,
                )
            )  # fmt: skip
        if self.memory is not None:
            for episode in episodes:
                episode.recall = self._recall(episode, episode.prompts["student"])
                if episode.shadow is not None:
                    episode.shadow_recall = self._recall(episode, episode.shadow)
        self._first_answers(episodes)
        self._production_answers([e for e in episodes if e.shadow is not None])
        for episode in episodes:
            if mode is not None:
                episode.mode, episode.reason = mode, "forced"
            else:
                episode.mode, episode.reason = self.policy.decide(self.agent_id, episode.probe)
        self._coach([e for e in episodes if e.mode == "coach"])
        self._review_and_retry([e for e in episodes if e.mode in ("paired", "coach")])
        return [self._event(e) for e in episodes]

    def _call(
        self,
        backend: ModelBackend,
        role: str,
        kind: str,
        episodes: list[_Episode],
        conversation: Callable[[_Episode], list[Message]],
        max_tokens: int,
        logprobs: bool = False,
    ) -> list[ChatResult]:
        params = GenerationParams(
            temperature=self.limits.temperature, max_tokens=max_tokens, logprobs=logprobs
        )
        arms = [e.model_arms.get(role, "production") for e in episodes]  # checkpoint rollouts
        results = complete_on_arms(backend, arms, [conversation(e) for e in episodes], params)
        for episode, result in zip(episodes, results, strict=True):
            episode.steps.append(
                Step(
                    index=len(episode.steps),
                    role=role,
                    kind=kind,
                    content=result.text,
                    model=result.model,
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    latency_ms=result.latency_ms,
                )
            )
        return results

    def _recall(self, episode: _Episode, student: PromptVersion) -> Recall:
        assert self.memory is not None
        policy = self.memory_policy or student.memory
        return recall(
            self.memory, policy, episode.task.input, episode.trace_id, self.memory_holdout
        )

    def _student_turn(self, episode: _Episode, content: str, shadow: bool = False) -> list[Message]:
        """The student's conversation: system prompt, the prompt version's demonstrations as
        solved user/assistant turns, then the entries recalled from memory for this task (the
        most similar last, nearest the request), then the request. With ``shadow``, as
        production's student version would have it (its prompt, demonstrations and recall)."""
        student = episode.shadow if shadow and episode.shadow else episode.prompts["student"]
        recalled = episode.shadow_recall if shadow else episode.recall
        shots: list[Message] = []
        for demo in student.demonstrations:
            shots += [
                {"role": "user", "content": demo.input},
                {"role": "assistant", "content": demo.output},
            ]
        for entry in reversed(recalled.entries):
            shots += [
                {"role": "user", "content": entry.input},
                {"role": "assistant", "content": entry.output},
            ]
        system: Message = {"role": "system", "content": student.text}
        return [system, *shots, {"role": "user", "content": content}]

    def _teacher_turn(self, episode: _Episode, content: str) -> list[Message]:
        return [episode.system("teacher"), {"role": "user", "content": content}]

    def _first_answers(self, episodes: list[_Episode]) -> None:
        results = self._call(
            self.student,
            "student",
            "baseline",
            episodes,
            lambda e: self._student_turn(e, e.task.input),
            self.limits.answer_tokens,
            logprobs=self.policy.uses_probe,
        )
        for episode, result in zip(episodes, results, strict=True):
            episode.answer = episode.baseline = result.text
            episode.probe = result.mean_logprobs[0] if result.mean_logprobs else None

    def _production_answers(self, episodes: list[_Episode]) -> None:
        """Production's un-taught answer to each canary task, asked as the first answer was,
        in one batched call: the comparison non-degradation needs, at one extra generation
        per canary task and none on production's arm."""
        if not episodes:
            return
        params = GenerationParams(
            temperature=self.limits.temperature, max_tokens=self.limits.answer_tokens
        )
        conversations = [self._student_turn(e, e.task.input, shadow=True) for e in episodes]
        production = model_on_arm(self.student, "production")
        for episode, result in zip(
            episodes, production.complete(conversations, params), strict=True
        ):
            episode.production_answer = result.text

    def _coach(self, episodes: list[_Episode]) -> None:
        if not episodes:
            return
        plans = self._call(
            self.student,
            "student",
            "plan",
            episodes,
            lambda e: self._student_turn(e, PLAN.format(task=e.task.input)),
            self.limits.plan_tokens,
        )
        for episode, result in zip(episodes, plans, strict=True):
            episode.plan = result.text
        notes = self._call(
            self.teacher,
            "teacher",
            "plan_review",
            episodes,
            lambda e: self._teacher_turn(e, PLAN_REVIEW.format(task=e.task.input, plan=e.plan)),
            self.limits.plan_tokens,
        )
        for episode, note in zip(episodes, notes, strict=True):
            episode.guidance = withhold_answer(note.text, episode.task.reference)[0]
        answers = self._call(
            self.student,
            "student",
            "answer",
            episodes,
            lambda e: self._student_turn(
                e, COACHED.format(task=e.task.input, plan=e.plan, note=e.guidance)
            ),
            self.limits.answer_tokens,
        )
        for episode, result in zip(episodes, answers, strict=True):
            episode.answer = result.text

    def _review_and_retry(self, episodes: list[_Episode]) -> None:
        if not episodes:
            return
        self._call(
            self.teacher,
            "teacher",
            "review",
            episodes,
            lambda e: self._teacher_turn(e, REVIEW.format(task=e.task.input, answer=e.answer)),
            self.limits.review_tokens,
        )
        failed = []
        for episode in episodes:
            review = episode.steps[-1]
            review.verdict = parse_verdict(review.content)
            if review.verdict == "fail":
                failed.append(episode)
        if not failed:
            return
        hints = self._call(
            self.teacher,
            "teacher",
            "guidance",
            failed,
            lambda e: self._teacher_turn(e, GUIDANCE.format(task=e.task.input, answer=e.answer)),
            self.limits.guidance_tokens,
        )
        for episode, hint in zip(failed, hints, strict=True):
            episode.guidance, leaked = withhold_answer(hint.text, episode.task.reference)
            episode.leaked = episode.leaked or leaked
            step = episode.steps[-1]
            step.content = episode.guidance
            step.verdict = "answer_withheld" if leaked else None
        retries = self._call(
            self.student,
            "student",
            "retry",
            failed,
            lambda e: [
                *self._student_turn(e, e.task.input),
                {"role": "assistant", "content": e.answer},
                {"role": "user", "content": RETRY.format(guidance=e.guidance)},
            ],
            self.limits.answer_tokens,
        )
        for episode, result in zip(failed, retries, strict=True):
            episode.answer = result.text

    def _event(self, episode: _Episode) -> InteractionEvent:
        task = episode.task
        arms = episode.model_arms
        models = {"student": model_on_arm(self.student, arms.get("student")).model_name}
        if any(step.role == "teacher" for step in episode.steps):
            models["teacher"] = model_on_arm(self.teacher, arms.get("teacher")).model_name
        metadata = {"mode_reason": episode.reason}
        if episode.probe is not None:
            metadata["probe"] = f"{episode.probe:.4f}"
        if episode.leaked:
            metadata["guidance_answer_withheld"] = "true"
        return InteractionEvent(
            trace_id=episode.trace_id,
            agent_id=self.agent_id,
            task_id=task.task_id or "adhoc",
            task_family=task.family,
            task_input=task.input,
            reference=task.reference,
            mode=episode.mode,
            prompt_versions=[
                PromptRef(role=role, version=version.version)
                for role, version in sorted(episode.prompts.items())
            ],
            models=models,
            steps=episode.steps,
            final_answer=episode.answer,
            baseline_answer=episode.baseline,
            usage=Usage(
                prompt_tokens=sum(s.prompt_tokens for s in episode.steps),
                completion_tokens=sum(s.completion_tokens for s in episode.steps),
            ),
            latency_ms=sum(s.latency_ms for s in episode.steps),
            metadata=metadata,
            memory_entries=episode.recall.ids,
            memory_held_back=list(episode.recall.held_back),
            rollouts=episode.rollouts,
            production_answer=episode.production_answer,
        )
