"""Learning material for a job: train, validation and held-out examples, never overlapping.

Every example lands in a split by a hash of its task input alone, whatever its source (a
stored trace or a built-in task), so the same question can never be in the optimizer's data
and in the held-out set the gate measures on, and the assignment is stable across jobs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from runtime.tasks import FAMILIES, Task, generate
from store.queries import TrainingTrace

SplitName = Literal["train", "validation", "heldout"]


class DatasetConfig(BaseModel):
    train_size: int = Field(24, ge=1, description="At most this many optimizer examples.")
    validation_size: int = Field(12, ge=1, description="GEPA's Pareto/validation set size.")
    heldout_size: int = Field(30, ge=1, description="The gate's held-out examples.")
    heldout_fraction: float = Field(0.3, gt=0, lt=1, description="Share of inputs held out.")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="Share for validation.")
    builtin_pool: int = Field(
        200, ge=0, description="Built-in tasks generated per family seen in the agent's traces."
    )
    seed: int = 0


@dataclass(frozen=True)
class Example:
    """One GEPA data instance: a task with what we know about the ideal answer."""

    task: Task
    source: Literal["trace", "builtin"]
    trace_id: str | None = None
    user_edit: str | None = None
    stored_answer: str | None = None
    stored_reward: float | None = None
    rationale: str = ""


@dataclass
class Splits:
    train: list[Example] = field(default_factory=list)
    validation: list[Example] = field(default_factory=list)
    heldout: list[Example] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "heldout": len(self.heldout),
        }


def split_of(text: str, config: DatasetConfig) -> SplitName:
    bucket = int.from_bytes(hashlib.sha256(" ".join(text.split()).encode()).digest()[:8]) / 2**64
    if bucket < config.heldout_fraction:
        return "heldout"
    if bucket < config.heldout_fraction + config.validation_fraction:
        return "validation"
    return "train"


def trace_example(trace: TrainingTrace) -> Example | None:
    """A stored trace as an example; its reference is the known answer or else the user's edit.
    Traces with neither are no use for optimizing (nothing to score a new answer against)."""
    reference = trace.reference or trace.edited_text
    if reference is None:
        return None
    answer_format = FAMILIES[trace.task_family][1] if trace.task_family in FAMILIES else "text"
    task = Task(
        trace.task_input,
        trace.task_id,
        trace.task_family,
        reference,
        answer_format,
    )
    return Example(
        task,
        "trace",
        trace_id=trace.trace_id,
        user_edit=trace.edited_text,
        stored_answer=trace.final_answer,
        stored_reward=trace.reward,
        rationale=trace.rationale,
    )


def build_splits(
    traces: Sequence[TrainingTrace], config: DatasetConfig, families: Sequence[str] = ()
) -> Splits:
    """Stored traces first (they come ordered: edited, then with a reference), then built-in
    tasks of the families the agent was seen on (and of ``families``), each split capped at
    its configured size."""
    examples = [e for e in map(trace_example, traces) if e is not None]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families: {', '.join(unknown)}")
    seen_families = {t.task_family for t in traces if t.task_family in FAMILIES}
    for family in sorted(seen_families | set(families)):
        for split in ("train", "validation", "test"):
            examples.extend(
                Example(task, "builtin")
                for task in generate(family, split, config.builtin_pool, config.seed)
            )
    splits = Splits()
    caps = {
        "train": config.train_size,
        "validation": config.validation_size,
        "heldout": config.heldout_size,
    }
    seen: set[str] = set()
    for example in examples:
        key = " ".join(example.task.input.split())
        if key in seen:
            continue
        seen.add(key)
        name = split_of(key, config)
        target: list[Example] = getattr(splits, name)
        if len(target) < caps[name]:
            target.append(example)
    return splits
