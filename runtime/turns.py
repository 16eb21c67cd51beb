"""The closed loop's words and lengths: the teacher's and student's prompt templates, the
generation limits, and the two checks on the teacher's replies (its verdict, and guidance
that must not give the answer away). ``runtime/core.py`` runs the loop with them."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

REVIEW = (
    "Task: {task}\n\nStudent's answer: {answer}\n\n"
    "Is the student's final answer correct? Reply with one word: PASS or FAIL."
)
GUIDANCE = (
    "Task: {task}\n\nStudent's answer, judged wrong: {answer}\n\n"
    "Give one short hint that helps the student find the mistake. Do not state the answer."
)
RETRY = "A reviewer judged this answer wrong. Hint: {guidance}\n\nAnswer the task again."
PLAN = "{task}\n\nDo not answer yet. Write a short plan (at most 3 steps) to solve this."
PLAN_REVIEW = (
    "Task: {task}\n\nStudent's plan: {plan}\n\n"
    "In one sentence, point out a mistake or missing step in the plan. Do not solve the task."
)
COACHED = "{task}\n\nYour plan: {plan}\nReviewer's note on the plan: {note}\n\nNow answer the task."
REDACTED = "[answer withheld]"
VERDICT = re.compile(r"\b(PASS|FAIL|INCORRECT|CORRECT|WRONG|RIGHT)\b", re.I)


class GenerationLimits(BaseModel):
    answer_tokens: int = Field(96, ge=1, description="Student answers and retries.")
    review_tokens: int = Field(8, ge=1, description="The teacher's PASS/FAIL verdict.")
    guidance_tokens: int = Field(64, ge=1, description="The teacher's hint after a FAIL.")
    plan_tokens: int = Field(64, ge=1, description="The student's plan and its review (coach).")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of every call.")


def parse_verdict(text: str) -> str:
    """'pass', 'fail' or 'unclear' from the first verdict word in the teacher's reply."""
    found = VERDICT.search(text)
    if found is None:
        return "unclear"
    return "pass" if found.group(1).upper() in ("PASS", "CORRECT", "RIGHT") else "fail"


def withhold_answer(guidance: str, reference: str | None) -> tuple[str, bool]:
    """The guidance with the reference answer (when known) removed; True if it leaked."""
    if not reference:
        return guidance, False
    pattern = re.compile(rf"(?<!\w){re.escape(reference)}(?!\w)", re.I)
    cleaned, count = pattern.subn(REDACTED, guidance)
    return cleaned, count > 0
