"""GRPO on the agent's model, optimised by DeepSpeed: a compact loop on ``deepspeed.initialize``.

Each step takes ``prompts_per_step`` training examples, samples ``group_size`` completions per
prompt from the policy, scores each with RIM, and turns the scores into group-relative
advantages ``(r - mean) / (std + eps)``. The loss is the clipped policy-gradient surrogate
with a per-token KL penalty (``beta``, the k3 estimator) against the frozen starting model.

What the model is trained *as* follows the agent's role:

* ``student``: the prompt is the student's conversation for the task; the reward is RIM's
  score of the completion as the final answer.
* ``teacher`` (the default, as in ATLAS): the prompt asks for a hint on the student's first
  answer; the frozen student retries with each sampled hint; the reward is RIM's score of the
  retry, and zero for a hint that gives the answer away.

Why our own loop and not TRL's GRPOTrainer: the teacher's reward needs the student to act on
each completion (a rollout of two models), which TRL's reward-function interface does not give
us, and the loop stays the same on CPU (gloo) and GPU. ``benchmarks/grpo.py`` compares the
seconds per step with TRL's trainer on the student setting, which both can run.

Every knob of a run is a field of ``GrpoConfig``, documented in ``trainer/grpo_config.py``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rim.reward import Rim
from runtime.backends.base import GenerationParams, Message, ModelBackend
from runtime.backends.local import load_tokenizer
from runtime.tasks import Task
from runtime.turns import GUIDANCE, RETRY, withhold_answer
from schemas.models import InteractionEvent
from trainer.grpo_config import GrpoConfig


@dataclass
class Rollout:
    """What the policy was asked (chat messages) and what it answered, with its reward."""

    messages: list[Message]
    completion_ids: list[int]
    text: str
    reward: float


def student_messages(system: str, task: Task) -> list[Message]:
    return [{"role": "system", "content": system}, {"role": "user", "content": task.input}]


def teacher_messages(system: str, task: Task, answer: str) -> list[Message]:
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": GUIDANCE.format(task=task.input, answer=answer)},
    ]


class RolloutScorer:
    """Rewards for completions of the trained role, from RIM (and the frozen student)."""

    def __init__(
        self,
        role: str,
        rim: Rim,
        prompts: dict[str, str],
        student: ModelBackend | None = None,
        student_tokens: int = 64,
    ):
        if role == "teacher" and student is None:
            raise ValueError("training the teacher needs a student backend for the retries")
        self.role = role
        self.rim = rim
        self.prompts = prompts
        self.student = student
        self.student_tokens = student_tokens

    def first_answers(self, tasks: Sequence[Task]) -> list[str]:
        if self.role != "teacher" or self.student is None:
            return [""] * len(tasks)
        conversations = [student_messages(self.prompts["student"], t) for t in tasks]
        params = GenerationParams(max_tokens=self.student_tokens)
        return [r.text for r in self.student.complete(conversations, params)]

    def policy_messages(self, task: Task, first_answer: str) -> list[Message]:
        if self.role == "student":
            return student_messages(self.prompts["student"], task)
        return teacher_messages(self.prompts["teacher"], task, first_answer)

    def rewards(
        self, tasks: Sequence[Task], first: Sequence[str], texts: Sequence[str]
    ) -> list[float]:
        """One reward per (task, first answer, completion) triple."""
        answers = list(texts)
        leaked = [False] * len(texts)
        if self.role == "teacher" and self.student is not None:
            retries = []
            for i, (task, answer, hint) in enumerate(zip(tasks, first, texts, strict=True)):
                hint, leaked[i] = withhold_answer(hint, task.reference)
                retries.append(
                    [
                        *student_messages(self.prompts["student"], task),
                        {"role": "assistant", "content": answer},
                        {"role": "user", "content": RETRY.format(guidance=hint)},
                    ]
                )
            params = GenerationParams(max_tokens=self.student_tokens)
            answers = [r.text for r in self.student.complete(retries, params)]
        events = [
            InteractionEvent(
                agent_id="grpo",
                task_id=task.task_id or "train",
                task_family=task.family,
                task_input=task.input,
                reference=task.reference,
                mode="auto",
                final_answer=answer,
            )
            for task, answer in zip(tasks, answers, strict=True)
        ]
        scores = [r.score for r in self.rim.score_many(events)]
        return [0.0 if leak else score for score, leak in zip(scores, leaked, strict=True)]


def group_advantages(rewards: Sequence[float], group_size: int) -> list[float]:
    """(r - group mean) / (group std + 1e-4): zero for a group whose rewards are all equal."""
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / len(group))
        out.extend((r - mean) / (std + 1e-4) for r in group)
    return out


@dataclass
class StepMetrics:
    step: int
    reward: float
    reward_std: float
    kl: float
    loss: float
    zero_variance_groups: int
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


class GrpoTrainer:
    """The loop. ``model_dir`` is a transformers folder (safetensors); the result is saved to
    ``output_dir`` the same way, with its tokenizer."""

    def __init__(
        self,
        config: GrpoConfig,
        model_dir: Path,
        scorer: RolloutScorer,
        examples: Sequence[Task],
        deepspeed_config: dict[str, Any],
    ):
        import deepspeed
        import torch
        from transformers import AutoModelForCausalLM

        if not examples:
            raise ValueError("GRPO needs at least one training example")
        self.config = config
        self.scorer = scorer
        self.examples = list(examples)
        self.rng = random.Random(config.seed)
        torch.manual_seed(config.seed)
        self.tokenizer = load_tokenizer(model_dir)
        policy = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, use_safetensors=True
        )
        self.reference = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, use_safetensors=True
        )
        self.reference.eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(
            policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.engine, *_ = deepspeed.initialize(
            model=policy, optimizer=optimizer, config=deepspeed_config
        )
        self.zero_stage = self.engine.zero_optimization_stage()
        self.device = self.engine.device
        self.reference.to(self.device)

    def _encode_prompts(self, conversations: Sequence[Sequence[Message]]) -> Any:
        texts = [
            self.tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        self.tokenizer.truncation_side = "left"
        return self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.config.max_prompt_tokens,
            add_special_tokens=False,
        ).to(self.device)

    def _sample(self, conversations: Sequence[Sequence[Message]]) -> tuple[Any, Any, int]:
        import torch

        encoded = self._encode_prompts(conversations)
        self.engine.module.eval()
        with torch.no_grad():
            sequences = self.engine.module.generate(
                **encoded,
                do_sample=True,
                temperature=self.config.temperature,
                top_p=1.0,
                top_k=0,
                max_new_tokens=self.config.max_completion_tokens,
                num_return_sequences=self.config.group_size,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        prompt_mask = encoded["attention_mask"].repeat_interleave(self.config.group_size, dim=0)
        return sequences, prompt_mask, encoded["input_ids"].shape[1]

    def _completion_mask(self, completions: Any) -> Any:
        """1 up to and including the first end-of-sequence token, 0 after."""
        import torch

        is_end = completions == self.tokenizer.eos_token_id
        first_end = torch.where(
            is_end.any(dim=1), is_end.int().argmax(dim=1), completions.shape[1] - 1
        )
        positions = torch.arange(completions.shape[1], device=completions.device)
        return (positions[None, :] <= first_end[:, None]).long()

    @staticmethod
    def _token_logprobs(model: Any, sequences: Any, attention: Any, prompt_len: int) -> Any:
        import torch

        logits = model(input_ids=sequences, attention_mask=attention).logits
        logits = logits[:, prompt_len - 1 : -1, :]
        targets = sequences[:, prompt_len:]
        return torch.log_softmax(logits.float(), dim=-1).gather(2, targets[..., None]).squeeze(2)

    def step(self, index: int) -> StepMetrics:
        import torch

        started = time.perf_counter()
        config = self.config
        tasks = [self.rng.choice(self.examples) for _ in range(config.prompts_per_step)]
        first = self.scorer.first_answers(tasks)
        conversations = [
            self.scorer.policy_messages(t, a) for t, a in zip(tasks, first, strict=True)
        ]
        sequences, prompt_mask, prompt_len = self._sample(conversations)
        completions = sequences[:, prompt_len:]
        mask = self._completion_mask(completions)
        texts = [
            self.tokenizer.decode(ids[: int(m.sum())], skip_special_tokens=True).strip()
            for ids, m in zip(completions, mask, strict=True)
        ]
        group = config.group_size
        rewards = self.scorer.rewards(
            [t for t in tasks for _ in range(group)],
            [a for a in first for _ in range(group)],
            texts,
        )
        advantages = torch.tensor(group_advantages(rewards, group), device=self.device)
        attention = torch.cat([prompt_mask, mask], dim=1)
        with torch.no_grad():
            reference = self._token_logprobs(self.reference, sequences, attention, prompt_len)
        self.engine.module.train()
        policy = self._token_logprobs(self.engine, sequences, attention, prompt_len)
        ratio = torch.exp(policy - policy.detach())  # one update per sample: old = current
        clipped = torch.clamp(ratio, 1 - config.epsilon, 1 + config.epsilon)
        surrogate = torch.min(ratio * advantages[:, None], clipped * advantages[:, None])
        delta = reference - policy
        kl = torch.exp(delta) - delta - 1
        per_token = -(surrogate - config.beta * kl)
        weights = mask.float()
        loss = ((per_token * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)).mean()
        self.engine.backward(loss)
        self.engine.step()
        mean = sum(rewards) / len(rewards)
        flat = [
            max(rewards[i : i + group]) == min(rewards[i : i + group])
            for i in range(0, len(rewards), group)
        ]
        return StepMetrics(
            step=index,
            reward=mean,
            reward_std=math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)),
            kl=float((kl.detach() * weights).sum() / weights.sum().clamp(min=1)),
            loss=float(loss.detach()),
            zero_variance_groups=sum(flat),
            seconds=time.perf_counter() - started,
        )

    def train(self, on_step: Callable[[StepMetrics], None] | None = None) -> list[StepMetrics]:
        history = []
        for index in range(1, self.config.steps + 1):
            metrics = self.step(index)
            history.append(metrics)
            if on_step is not None:
                on_step(metrics)
        return history

    def save(self, output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        if self.zero_stage == 3:
            self.engine.save_16bit_model(str(output_dir))  # gathers the partitioned weights
        self.engine.module.save_pretrained(output_dir, safe_serialization=True)
        self.tokenizer.padding_side = "left"
        self.tokenizer.save_pretrained(output_dir)


def single_process_environment(master_port: int) -> None:
    """Let ``deepspeed.initialize`` run in this process (world size 1, CPU unless told
    otherwise), without the launcher: for benchmarks and notebooks."""
    os.environ.update(
        HF_HUB_OFFLINE="1",
        DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(master_port),
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
    )


def read_deepspeed_config(config_dir: Path, config: GrpoConfig) -> dict[str, Any]:
    path = config_dir / config.deepspeed_config
    if not path.exists():
        raise FileNotFoundError(f"DeepSpeed config {path} not found")
    return json.loads(path.read_text())
