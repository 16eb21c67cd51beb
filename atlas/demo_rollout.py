"""The demo's canary rollouts (issue 17, item 4): the learned prompt earns its traffic from live
rewards, and a deliberately worse candidate is rolled back, both decided by `atlas worker
rollouts` while the demo's traffic runs.

* GEPA publishes the candidate that passed its held-out gate as a canary (``canary_share`` of
  the demo's GEPA config); :func:`run_rollout` runs traffic in chunks until the controller has
  decided (the canary label left the prompts topic) or ``max_tasks`` ran. Undecided by then,
  the demo ends the rollout as `atlas rollout abort` does, and says so: it never promotes by
  hand.
* :func:`worse_candidate` is production's student prompt with demonstrations whose answers are
  other tasks' references. A small model copies a demonstration's answer onto inputs unlike
  it (CALIBRATION.md), so its answers go wrong. The demo publishes it as a canary without the
  held-out gate, as an operator's forced publish would, to show the live test catching what
  the gate is there to stop.
* The decision the report shows is the one the store holds (``rollout_statuses``), waited for
  after the label moved: it carries the figures the controller decided on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from atlas.commands.rollout import end_canary
from atlas.settings import Settings
from runtime.prompts import PromptSubscriber, newest_versions, next_versions
from runtime.rollout import for_rollout
from runtime.tasks import generate
from schemas.models import CANARY, Demonstration, PromptVersion
from schemas.rollouts import RolloutStatus
from store.queries import rollout_statuses

DECIDED = ("promoted", "rolled_back", "aborted")
# Runs ``n`` tasks of the demo's traffic under a progress label, checking ``stop`` between
# chunks; returns how many ran.
Traffic = Callable[[str, int, Callable[[], bool]], int]


@dataclass(frozen=True)
class RolloutRun:
    """One canary of the demo: what it was, the tasks it ran for, and how it ended."""

    name: str
    canary: PromptVersion
    tasks: int
    decision: RolloutStatus | None  # the stored decision; None when the demo ended it

    @property
    def state(self) -> str:
        return "ended undecided" if self.decision is None else self.decision.state.replace("_", " ")

    @property
    def outcome(self) -> str:
        if self.decision is None:
            return f"undecided after {self.tasks} tasks: ended by the demo"
        return self.state


def wrong_demonstrations(family: str, n: int = 3) -> list[Demonstration]:
    """``n`` solved-looking examples of ``family`` whose outputs are another task's reference
    (never the input's own), from tasks the demo's traffic does not use."""
    tasks = [t for t in generate(family, "test", 4 * n, seed=23) if t.reference is not None]
    shots = []
    for task, other in zip(tasks, tasks[1:] + tasks[:1], strict=True):
        if other.reference != task.reference:
            shots.append(Demonstration(input=task.input, output=str(other.reference)))
        if len(shots) == n:
            break
    return shots


def worse_candidate(
    prompts: PromptSubscriber, agent: str, family: str, share: float
) -> PromptVersion:
    """Production's student prompt with :func:`wrong_demonstrations`, as a canary on ``share``
    of tasks (a fresh rollout id), numbered after every version of the role."""
    production = prompts.snapshot(agent)
    [version] = next_versions(
        production,
        {},
        "manual",
        {"student": wrong_demonstrations(family)},
        newest=newest_versions(prompts.labels(agent)),
    )
    return for_rollout(version, share, None, queue=False)


def run_rollout(
    name: str,
    canary: PromptVersion,
    prompts: PromptSubscriber,
    traffic: Traffic,
    max_tasks: int,
    settings: Settings,
    store: Any,
) -> RolloutRun:
    """Traffic until the controller decides ``canary``'s rollout or ``max_tasks`` ran (then the
    demo ends it unpromoted); the stored decision."""
    agent, role = canary.agent_id, canary.role
    if not prompts.wait_for(agent, role, canary.version, timeout=60, label=CANARY):
        raise TimeoutError(f"{agent}/{role} v{canary.version} did not arrive as a canary in 60s")

    def decided() -> bool:
        running = prompts.labelled(agent, CANARY).get(role)
        return running is None or running.rollout_id != canary.rollout_id

    share = canary.traffic_share or 0.0
    ran = traffic(f"{name}: canary v{canary.version} on {share:.0%}", max_tasks, decided)
    if not decided():
        end_canary(settings, agent, role)
        return RolloutRun(name, canary, ran, None)
    decision = stored_decision(store, canary)
    if decision.state == "promoted":  # the next canary is built on it: wait until it is seen
        prompts.wait_for(agent, role, canary.version, timeout=30)
    return RolloutRun(name, canary, ran, decision)


def stored_decision(store: Any, canary: PromptVersion, timeout: float = 60.0) -> RolloutStatus:
    """The controller's decision on ``canary``'s rollout as the sink stored it."""
    deadline = time.monotonic() + timeout
    while True:
        for status in rollout_statuses(store, canary.agent_id, canary.role):
            if status.rollout_id == canary.rollout_id and status.state in DECIDED:
                return status
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the decision on rollout {canary.rollout_id} was not stored within"
                f" {timeout:.0f}s: is the sink running?"
            )
        time.sleep(1)
