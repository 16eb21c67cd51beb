"""Seconds per GRPO step on this machine, in one run: our DeepSpeed loop (trainer/grpo.py)
and TRL's GRPOTrainer, with the same model (SmolLM2-135M), prompts, group size, completion
length, batch, learning rate and reward (RIM's programmatic judges), on the student setting
both can run. Prints the median seconds per step of each and the ratio.

    .venv/bin/python benchmarks/grpo.py [--steps 6] [--group 4] [--prompts 2] [--tokens 32]

Runs as one process (world size 1): DeepSpeed gets its rendezvous from the environment.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from atlas.settings import PROJECT_CONFIGS, Settings
from consumers.grpo_worker import free_port
from rim.config import build_rim, load_rim_config
from runtime.backends.local import default_model_dir
from runtime.tasks import generate
from schemas.models import InteractionEvent
from trainer.grpo import (
    GrpoTrainer,
    RolloutScorer,
    read_deepspeed_config,
    single_process_environment,
)
from trainer.grpo_config import GrpoConfig

SYSTEM = "Answer with the city only."


def ours(args: argparse.Namespace, model_dir: Path) -> tuple[list[float], int]:
    config = GrpoConfig(
        role="student",
        steps=args.steps,
        prompts_per_step=args.prompts,
        group_size=args.group,
        max_completion_tokens=args.tokens,
        learning_rate=1e-6,
    )
    scorer = RolloutScorer(
        "student", build_rim(load_rim_config(PROJECT_CONFIGS)), {"student": SYSTEM}
    )
    tasks = generate("extraction", "train", 64)
    trainer = GrpoTrainer(
        config, model_dir, scorer, tasks, read_deepspeed_config(PROJECT_CONFIGS, config)
    )
    history = trainer.train()
    return [m.seconds for m in history], trainer.zero_stage


def trl(args: argparse.Namespace, model_dir: Path) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tasks = {t.input: t for t in generate("extraction", "train", 64)}
    rim = build_rim(load_rim_config(PROJECT_CONFIGS))

    def reward(prompts: list, completions: list, **_: object) -> list[float]:
        events = []
        for prompt, completion in zip(prompts, completions, strict=True):
            task = tasks[prompt[-1]["content"]]
            events.append(
                InteractionEvent(
                    agent_id="bench",
                    task_id=task.task_id,
                    task_family=task.family,
                    task_input=task.input,
                    reference=task.reference,
                    mode="auto",
                    final_answer=completion[-1]["content"],
                )
            )
        return [r.score for r in rim.score_many(events)]

    data = Dataset.from_list(
        [
            {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": t}]}
            for t in tasks
        ]
    )
    durations: list[float] = []

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        started = 0.0

        def on_step_begin(self, *_: object, **__: object) -> None:
            StepTimer.started = time.perf_counter()

        def on_step_end(self, *_: object, **__: object) -> None:
            durations.append(time.perf_counter() - StepTimer.started)

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=args.prompts * args.group,
            num_generations=args.group,
            max_completion_length=args.tokens,
            learning_rate=1e-6,
            beta=0.04,
            temperature=1.0,
            use_cpu=True,
            bf16=False,
            report_to=[],
            logging_steps=1,
            save_strategy="no",
            seed=0,
        )
        trainer = GRPOTrainer(
            model=str(model_dir),
            reward_funcs=reward,
            args=config,
            train_dataset=data,
            callbacks=[StepTimer()],
        )
        trainer.train()
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    single_process_environment(free_port())
    model_dir = default_model_dir(Settings().cache_dir)
    ours_steps, stage = ours(args, model_dir)
    trl_steps = trl(args, model_dir)
    # the first step pays one-time costs (allocations, op builds): leave it out of the median
    ours_median = statistics.median(ours_steps[1:] or ours_steps)
    trl_median = statistics.median(trl_steps[1:] or trl_steps)
    print(
        f"setting: SmolLM2-135M, {args.prompts} prompts x {args.group} samples,"
        f" {args.tokens} completion tokens, {args.steps} steps, CPU fp32"
    )
    print(f"ours (DeepSpeed ZeRO-{stage} loop): median {ours_median:.2f} s/step  {ours_steps}")
    print(f"TRL GRPOTrainer:                 median {trl_median:.2f} s/step  {trl_steps}")
    print(f"ratio ours/TRL: {ours_median / trl_median:.2f}")


if __name__ == "__main__":
    main()
