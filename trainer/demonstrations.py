"""Demonstrations: solved examples a prompt version carries, distilled from rewarded traces.

On small models, solved examples given as chat turns change behaviour far more than written
instructions (CALIBRATION.md), and a user's edit is exactly such an example: the input, and
the output the user wanted. The proposer offers GEPA sets of them, drawn from the optimizer's
own training examples only (never validation or held-out inputs); GEPA's Pareto selection and
the publish gate decide which set, if any, wins.

Inside a GEPA candidate (``dict[str, str]``) the student's demonstrations are one component,
``DEMONSTRATIONS``, holding the set as JSON.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence

from pydantic import BaseModel, Field

from schemas.models import Demonstration
from schemas.terms import rough_tokens as rough_pair_tokens
from trainer.datasets import Example

DEMONSTRATIONS = "student_demonstrations"


class DemonstrationConfig(BaseModel):
    enabled: bool = Field(True, description="Let GEPA evolve the student's demonstrations.")
    max_examples: int = Field(3, ge=1, description="Demonstrations in one set.")
    token_budget: int = Field(240, ge=8, description="Rough token cap for a whole set.")
    min_reward: float = Field(
        0.8, ge=0, le=1, description="An unedited trace qualifies with at least this reward."
    )


def encode(demonstrations: Sequence[Demonstration]) -> str:
    return json.dumps([d.model_dump() for d in demonstrations], ensure_ascii=False)


def decode(text: str) -> list[Demonstration]:
    return [Demonstration.model_validate(d) for d in json.loads(text or "[]")]


def rough_tokens(demonstration: Demonstration) -> int:
    return rough_pair_tokens(demonstration.input, demonstration.output)


def candidates_from(
    examples: Sequence[Example], min_reward: float, set_size: int
) -> list[Demonstration]:
    """Edited traces (the edit is the ideal output), one per input; well-rewarded unedited
    traces join only when there are fewer than ``set_size`` edits, because a careless
    approval can reward a rambling answer that would then be taught. Built-in tasks are not
    used: demonstrations come from what users saw and judged."""
    edited, rewarded, seen = [], [], set()
    for example in examples:
        if example.source != "trace" or example.task.input in seen:
            continue
        if example.user_edit:
            edited.append(Demonstration(input=example.task.input, output=example.user_edit))
        elif example.stored_answer and (example.stored_reward or 0) >= min_reward:
            rewarded.append(Demonstration(input=example.task.input, output=example.stored_answer))
        else:
            continue
        seen.add(example.task.input)
    return edited if len(edited) >= set_size else edited + rewarded


WORD = re.compile(r"[^\W\d_]+")


def shape(text: str) -> frozenset[str]:
    """The words of an input without its numbers: inputs written from the same template share
    most of them."""
    return frozenset(w.lower() for w in WORD.findall(text))


def distance(a: frozenset[str], b: frozenset[str]) -> float:
    return 1 - len(a & b) / len(a | b) if a | b else 0.0


class DemonstrationProposer:
    """Proposes a different set on each call: a random first demonstration, then each next one
    the input least like those already chosen, so every kind of input the agent sees has a
    demonstration that looks like it (a small model shown only other kinds copies a demo's
    answer); no two with the same output (a set never teaches one answer for everything);
    within the token budget."""

    def __init__(self, pool: Sequence[Demonstration], config: DemonstrationConfig, seed: int = 0):
        self.pool = list(pool)
        self.shapes = {d.input: shape(d.input) for d in self.pool}
        self.config = config
        self.rng = random.Random(seed)

    def propose(self) -> list[Demonstration]:
        remaining = self.pool[:]
        self.rng.shuffle(remaining)
        chosen: list[Demonstration] = []
        budget = self.config.token_budget
        while len(chosen) < self.config.max_examples:
            outputs = {d.output for d in chosen}
            remaining = [
                d for d in remaining if rough_tokens(d) <= budget and d.output not in outputs
            ]
            if not remaining:
                break
            # max() keeps the first of equals, and remaining is in random order
            best = max(remaining, key=lambda d: self._novelty(d, chosen))
            chosen.append(best)
            remaining.remove(best)
            budget -= rough_tokens(best)
        return chosen

    def _novelty(self, candidate: Demonstration, chosen: list[Demonstration]) -> float:
        mine = self.shapes[candidate.input]
        return min((distance(mine, self.shapes[d.input]) for d in chosen), default=1.0)
