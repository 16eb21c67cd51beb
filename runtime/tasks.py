"""Built-in task families with reference answers, generated deterministically from a seed.

They feed the demo, the programmatic judges and the learning benchmarks. Splits are disjoint
by construction: each split draws people's names (word problems) or order numbers
(extraction) from its own pool, so a held-out input can never appear in a training split.

* ``arithmetic``: one-step add/subtract word problems (answer: an integer);
* ``two_step``: two-step arithmetic word problems (answer: an integer);
* ``extraction``: name the destination city in an order/parcel sentence (answer: a city).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "validation", "test"]
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "validation": 1_000_000, "test": 2_000_000}

NAMES: dict[str, list[str]] = {
    "train": ["Tom", "Ana", "Li", "Sara", "Omar", "Kate", "Ivan", "Maya"],
    "validation": ["Noah", "Zoe", "Ravi", "Elena"],
    "test": ["Ben", "Mia", "Yusuf", "Ines", "Pablo", "Hana", "Felix", "Nora"],
}
ORDER_NUMBERS: dict[str, tuple[int, int]] = {
    "train": (10000, 49999),
    "validation": (50000, 69999),
    "test": (70000, 99999),
}
THINGS = ["apples", "books", "marbles", "stamps", "pencils", "cookies", "coins", "stickers"]
CITIES = [
    "Paris",
    "Berlin",
    "Madrid",
    "Lisbon",
    "Vienna",
    "Prague",
    "Dublin",
    "Oslo",
    "Warsaw",
    "Athens",
    "Rome",
    "Zurich",
    "Boston",
    "Denver",
    "Austin",
    "Seattle",
    "Toronto",
    "Chicago",
]
CITY_SET = frozenset(CITIES)

ITEMS = [
    "a blue lamp",
    "two chairs",
    "a laptop stand",
    "wool socks",
    "a coffee grinder",
    "garden tools",
    "a yoga mat",
    "printer paper",
    "a desk clock",
    "three mugs",
]
COURIERS = ["FastShip", "PostNord", "QuickParcel", "DHL", "UPS"]


@dataclass(frozen=True)
class Task:
    """One unit of work for an agent. Production tasks need only ``input``; the built-in
    families also carry a reference answer and the shape of a bare answer."""

    input: str
    task_id: str = ""
    family: str | None = None
    reference: str | None = None
    answer_format: str = "text"  # "integer", "word" or "text": what a bare answer looks like


def _arithmetic(rng: random.Random, split: str) -> tuple[str, str]:
    name, thing = rng.choice(NAMES[split]), rng.choice(THINGS)
    a = rng.randint(5, 60)
    if rng.random() < 0.5:
        b = rng.randint(2, 40)
        return (
            f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?",
            str(a + b),
        )
    b = rng.randint(1, a - 1)
    return (
        f"{name} has {a} {thing} and gives away {b}. How many {thing} does {name} have left?",
        str(a - b),
    )


def _two_step(rng: random.Random, split: str) -> tuple[str, str]:
    name, thing = rng.choice(NAMES[split]), rng.choice(THINGS)
    a, b = rng.randint(10, 50), rng.randint(2, 30)
    c = rng.randint(1, a + b - 1)
    text = (
        f"{name} has {a} {thing}, buys {b} more, then gives {c} to a friend. "
        f"How many {thing} does {name} have now?"
    )
    return text, str(a + b - c)


def _extraction(rng: random.Random, split: str) -> tuple[str, str]:
    city = rng.choice(CITIES)
    name, item, courier = rng.choice(NAMES[split]), rng.choice(ITEMS), rng.choice(COURIERS)
    order = rng.randint(*ORDER_NUMBERS[split])
    templates = [
        f"Order #{order}: {name} ordered {item}, shipping to {city} via {courier}.",
        f"{courier} parcel {order} with {item} for {name} is on its way to {city}.",
        f"Please deliver {item} (order {order}) to {name} in {city}; carrier: {courier}.",
    ]
    return rng.choice(templates) + " Which city is it going to?", city


FAMILIES: dict[str, tuple[Callable[[random.Random, str], tuple[str, str]], str]] = {
    "arithmetic": (_arithmetic, "integer"),
    "two_step": (_two_step, "integer"),
    "extraction": (_extraction, "word"),
}


def generate(family: str, split: Split = "train", n: int = 60, seed: int = 0) -> list[Task]:
    """``n`` tasks of ``family`` from ``split``; the same arguments always give the same tasks."""
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; choose from {', '.join(FAMILIES)}")
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; choose train, validation or test")
    make, answer_format = FAMILIES[family]
    tasks = []
    for index in range(n):
        item = SPLIT_OFFSETS[split] + index
        rng = random.Random(f"{family}:{seed}:{item}")
        text, reference = make(rng, split)
        tasks.append(
            Task(text, f"{family}-{seed}-{split}-{index}", family, reference, answer_format)
        )
    return tasks


INTEGER = re.compile(r"-?\d+")


def last_integer(text: str) -> str | None:
    found = INTEGER.findall(text.replace(",", ""))
    return found[-1] if found else None


# One pass finds every city an answer names (no city's name is a word of another's).
CITY_NAMES = re.compile(r"\b(?:" + "|".join(map(re.escape, CITIES)) + r")\b")
BARE = {"integer": re.compile(r"-?\d+"), "word": re.compile(r"[A-Za-z]+")}


def is_correct(task: Task, answer: str) -> bool:
    """The project's one scoring rule: last integer for numbers; for words, the reference is
    the only candidate named."""
    if task.reference is None:
        raise ValueError(f"task {task.task_id or task.input[:40]!r} has no reference answer")
    return matches_reference(task.reference, task.answer_format, answer)


def matches_reference(reference: str, answer_format: str, answer: str) -> bool:
    """``is_correct`` for a reference and an answer format (the judges score each trace with
    it, without building a Task)."""
    if answer_format == "integer":
        return last_integer(answer) == reference
    if answer_format == "word" and reference in CITY_SET:
        return set(CITY_NAMES.findall(answer)) == {reference}
    return " ".join(answer.lower().split()).strip(" .") == reference.lower().strip()


def is_bare(task: Task, answer: str) -> bool:
    """The whole answer is the bare value (a number or one word), nothing else."""
    return is_bare_value(task.answer_format, answer)


def is_bare_value(answer_format: str, answer: str) -> bool:
    """``is_bare`` for an answer format: "integer" wants a number, any other one word."""
    stripped = answer.strip().rstrip(".").strip()
    pattern = BARE["integer" if answer_format == "integer" else "word"]
    return pattern.fullmatch(stripped) is not None
