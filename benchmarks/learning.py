"""Does the system make the offline model better? One run, same seeds, a table at the end.

Per task family, on the built-in test split with SmolLM2-135M:
* baseline (student alone) vs the closed loop (paired, same model as teacher): mean reward,
  accuracy, relative lift, non-degradation (taught reward >= its baseline), tokens per task;
* GEPA: simulated users edit the baseline's answers on training tasks; GEPA (demonstrations
  from those edits; no reflection model) for a fixed budget; held-out reward before/after;
* GRPO: a fixed short run of our DeepSpeed loop on the student; held-out reward before/after.

    .venv/bin/python benchmarks/learning.py [--n 60] [--families extraction,arithmetic]
        [--gepa-budget 40] [--grpo-steps 10]

With n = 60 one item is 1.7 points; changes under ~10 points are noise (CALIBRATION.md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from atlas.settings import PROJECT_CONFIGS, Settings
from consumers.grpo_worker import free_port
from rim.config import build_rim, load_rim_config
from runtime.backends.local import LocalBackend, default_model_dir
from runtime.core import Runtime
from runtime.prompts import StaticPrompts
from runtime.tasks import Task, generate, is_correct
from runtime.turns import GenerationLimits
from store.queries import TrainingTrace
from trainer.datasets import DatasetConfig, Example, build_splits
from trainer.evaluation import PromptEvaluator
from trainer.gepa_config import GepaConfig
from trainer.gepa_engine import evolve_prompts
from trainer.grpo import (
    GrpoTrainer,
    RolloutScorer,
    read_deepspeed_config,
    single_process_environment,
)
from trainer.grpo_config import GrpoConfig

SEEDS = {
    "student": "You are a helpful assistant. Solve the user's task step by step if needed, and"
    " end with the final answer.",
    "teacher": "You are a strict, concise reviewer. You check a student's answer to a task and"
    " help the student fix mistakes without ever giving the answer away.",
}


def loop_figures(backend: LocalBackend, rim, tasks: list[Task], limits) -> dict[str, float]:  # type: ignore[no-untyped-def]
    runtime = Runtime("bench", backend, backend, StaticPrompts(SEEDS), limits=limits)
    out: dict[str, float] = {}
    for mode in ("auto", "paired"):
        events = []
        for start in range(0, len(tasks), 8):
            events += runtime.run_many(tasks[start : start + 8], mode)  # type: ignore[arg-type]
        rewards = [r.score for r in rim.score_many(events)]
        out[f"{mode}_reward"] = sum(rewards) / len(rewards)
        out[f"{mode}_accuracy"] = sum(
            is_correct(t, e.final_answer) for t, e in zip(tasks, events, strict=True)
        ) / len(tasks)
        out[f"{mode}_tokens"] = sum(e.usage.total_tokens for e in events) / len(events)
        if mode == "paired":
            baselines = rim.baseline_rewards(events)
            kept = [r >= b for r, b in zip(rewards, baselines, strict=True) if b is not None]
            out["non_degradation"] = sum(kept) / len(kept) if kept else float("nan")
    return out


def edited_traces(backend: LocalBackend, family: str, n: int, limits) -> list[TrainingTrace]:  # type: ignore[no-untyped-def]
    """Baseline answers on training tasks, edited by users to the reference (what users do)."""
    tasks = generate(family, "train", n, seed=3)  # type: ignore[arg-type]
    runtime = Runtime("bench", backend, backend, StaticPrompts(SEEDS), limits=limits)
    traces = []
    for start in range(0, len(tasks), 8):
        chunk = tasks[start : start + 8]
        for task, event in zip(chunk, runtime.run_many(chunk, "auto"), strict=True):
            traces.append(
                TrainingTrace(
                    event.trace_id,
                    task.task_id,
                    family,
                    task.input,
                    task.reference,
                    event.final_answer,
                    0.5,
                    0.5,
                    task.reference,
                    "",
                )
            )
    return traces


def gepa_figures(backend, rim, family: str, args, limits) -> dict[str, float]:  # type: ignore[no-untyped-def]
    config = GepaConfig(
        budget=args.gepa_budget,
        minibatch_size=6,
        eval_mode="auto",
        limits=limits,
        dataset=DatasetConfig(train_size=32, validation_size=12, heldout_size=args.n),
    )
    splits = build_splits(edited_traces(backend, family, 48, limits), config.dataset)
    evaluator = PromptEvaluator("bench", backend, backend, rim, "auto", limits)
    outcome = evolve_prompts(SEEDS, splits, evaluator, None, config)
    d = outcome.decision
    return {
        "gepa_before": d.current_reward,
        "gepa_after": d.candidate_reward,
        "gepa_n": float(d.n),
        "gepa_published": float(d.passed),
        "gepa_non_degradation": d.non_degradation,
    }


def grpo_figures(model_dir: Path, rim, family: str, args, limits) -> dict[str, float]:  # type: ignore[no-untyped-def]
    config = GrpoConfig(
        role="student",
        steps=args.grpo_steps,
        prompts_per_step=2,
        group_size=4,
        max_completion_tokens=48,
        learning_rate=1e-6,
    )
    tasks = generate(family, "train", 64, seed=5)  # type: ignore[arg-type]
    scorer = RolloutScorer("student", rim, SEEDS)
    heldout = [Example(t, "builtin") for t in generate(family, "test", args.n)]  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as out:
        trainer = GrpoTrainer(
            config, model_dir, scorer, tasks, read_deepspeed_config(PROJECT_CONFIGS, config)
        )
        history = trainer.train()
        trainer.save(Path(out))
        del trainer
        scores = {}
        for name, folder in (("before", model_dir), ("after", Path(out))):
            model = LocalBackend(folder, max_batch=8)
            evaluator = PromptEvaluator("bench", model, model, rim, "auto", limits)
            result = evaluator.evaluate(SEEDS, heldout)
            scores[name] = sum(s.reward.score for s in result) / len(result)
    return {
        "grpo_before": scores["before"],
        "grpo_after": scores["after"],
        "grpo_train_reward_first": history[0].reward,
        "grpo_train_reward_last": history[-1].reward,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="test/held-out items per family")
    parser.add_argument("--families", default="extraction,arithmetic")
    parser.add_argument("--gepa-budget", type=int, default=40)
    parser.add_argument("--grpo-steps", type=int, default=10)
    parser.add_argument("--answer-tokens", type=int, default=96)
    args = parser.parse_args()
    single_process_environment(free_port())
    model_dir = default_model_dir(Settings().cache_dir)
    backend = LocalBackend(model_dir, max_batch=8)
    rim = build_rim(load_rim_config(PROJECT_CONFIGS))
    limits = GenerationLimits(answer_tokens=args.answer_tokens)
    rows = {}
    for family in args.families.split(","):
        tasks = generate(family, "test", args.n)  # type: ignore[arg-type]
        figures = loop_figures(backend, rim, tasks, limits)
        figures |= gepa_figures(backend, rim, family, args, limits)
        figures |= grpo_figures(model_dir, rim, family, args, limits)
        rows[family] = figures
        print(family, {k: round(v, 3) for k, v in figures.items()}, flush=True)

    print(f"\nSmolLM2-135M, n={args.n} per family, answer tokens {args.answer_tokens}")
    header = (
        "| family | baseline reward (acc.) | closed loop reward (acc.) | lift | non-degr."
        " | tokens/task base -> loop | GEPA held-out before -> after (published) |"
        " GRPO held-out before -> after |"
    )
    print(header)
    print("|" + "---|" * 8)
    for family, f in rows.items():
        lift = (f["paired_reward"] - f["auto_reward"]) / f["auto_reward"] if f["auto_reward"] else 0
        print(
            f"| {family} | {f['auto_reward']:.3f} ({f['auto_accuracy']:.3f})"
            f" | {f['paired_reward']:.3f} ({f['paired_accuracy']:.3f}) | {lift:+.0%}"
            f" | {f['non_degradation']:.3f} | {f['auto_tokens']:.0f} -> {f['paired_tokens']:.0f}"
            f" | {f['gepa_before']:.3f} -> {f['gepa_after']:.3f}"
            f" ({'yes' if f['gepa_published'] else 'no'})"
            f" | {f['grpo_before']:.3f} -> {f['grpo_after']:.3f} |"
        )


if __name__ == "__main__":
    main()
