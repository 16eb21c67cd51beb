"""`atlas demo`: a simulated production day on the local stack, end to end.

An agent runs the closed loop with the offline model on a built-in task; simulated users
approve bare right answers and edit the rest (with noise); the reward worker scores and the
sink stores every trace; the automatic retrain policy fires a GEPA job once enough traces are
in; the job's demonstrations (distilled from the users' edits) face the held-out gate; a
passed candidate goes out as a canary on a share of the afternoon's tasks, and the rollout
controller promotes it from live rewards; then a deliberately worse candidate goes out as a
canary and is rolled back (atlas/demo_rollout.py), and evening traffic runs on what production
became. Everything the demo starts (workers, and the stack if it was not running) is stopped
by PID at the end or on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import Progress

from atlas import stack
from atlas.commands.common import publish_as_learner
from atlas.demo_report import report
from atlas.demo_rollout import run_rollout, worse_candidate
from atlas.settings import Settings
from deploy.local.processes import StackError, pid_alive, stop_pid
from schemas.configfile import read_yaml
from schemas.models import CANARY


@dataclass(frozen=True)
class DemoPlan:
    task: str
    before: int  # tasks before the retrain
    after: int  # tasks after the rollouts
    budget: int  # GEPA metric calls
    train: int
    validation: int
    heldout: int
    answer_tokens: int
    min_samples: int  # per mode, before the mode policy trusts recent rewards
    canary_share: float  # of tasks, for each canary
    rollout_tasks: int  # at most, per rollout, before the demo ends it undecided
    rollout_min_samples: int  # per arm, before the controller decides

    def configs(self) -> dict[str, dict[str, Any]]:
        """Overrides of configs/*.yaml for the demo's workers and agent."""
        return {
            "retrain_policy": {
                "window": min(10, self.before),
                "every_n_traces": self.before,
                "drop_margin": 0.5,
                "cooldown_s": 3600,
                "kind": "gepa",
            },
            "gepa": {
                "budget": self.budget,
                "minibatch_size": 6,
                "eval_mode": "auto",
                "limits": {"answer_tokens": self.answer_tokens, "temperature": 0.0},
                "dataset": {
                    "train_size": self.train,
                    "validation_size": self.validation,
                    "heldout_size": self.heldout,
                },
                # Demonstrations make a few answers copy a demo's city (CALIBRATION.md: 100%
                # -> 93% accuracy) while making most answers bare; the demo accepts that trade
                # at up to 10% of held-out examples and 20% of those production gets right
                # (about 36 here: 7% expected losses spread to 14% in one run), and says so.
                "gate": {
                    "min_non_degradation": DEMO_NON_DEGRADATION,
                    "min_retention": DEMO_RETENTION,
                },
                "canary_share": self.canary_share,
                "when_canary_runs": "replace",
            },
            "rollout": {
                # The demo's differences are large (CALIBRATION.md: bare answers), so its test
                # is tuned to decide early; any tuning keeps the test's alpha.
                "test": {
                    "min_samples": self.rollout_min_samples,
                    "tuned_samples": self.rollout_min_samples,
                },
                "report_every": 4,  # a point of the chart's line every 4 scored tasks
                # live non-degradation accepts the same trade as the demo's gate
                "non_degradation": {
                    "min_non_degradation": DEMO_NON_DEGRADATION,
                    "min_retention": DEMO_RETENTION,
                },
            },
            "agent": {
                "policy": {
                    "min_samples": self.min_samples,
                    "explore_rate": 0.3,
                    "cache_seconds": 5,
                },
                "limits": {"answer_tokens": self.answer_tokens},
            },
        }


DEMO_NON_DEGRADATION = 0.9
DEMO_RETENTION = 0.8
FULL = DemoPlan("extraction", 48, 16, 60, 24, 12, 60, 64, 6, 0.5, 160, 30)
QUICK = DemoPlan("extraction", 16, 8, 18, 8, 6, 12, 40, 4, 0.5, 120, 20)
WORKERS = ("rewards", "sink", "gepa", "rollouts")


def write_configs(source: Path, target: Path, overrides: dict[str, dict[str, Any]]) -> Path:
    shutil.copytree(source, target, dirs_exist_ok=True)
    for name, values in overrides.items():
        path = target / f"{name}.yaml"
        config = read_yaml(path)
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


@dataclass
class Started:
    """What the demo started, to stop exactly that."""

    stack: bool = False
    workers: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def stop(self, settings: Settings, say: Callable[[str], None]) -> None:
        for name, process in reversed(self.workers):
            if stop_pid(process.pid, "atlas.cli", timeout=30):
                say(f"stopped the {name} worker (pid {process.pid})")
        self.workers.clear()
        if self.stack:
            for line in stack.down(settings):
                say(f"stopped {line}")
            self.stack = False


def start_worker(name: str, env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{name}.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "atlas.cli", "worker", name],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops them by PID
        )


def run_demo(
    settings: Settings, plan: DemoPlan, console: Console, job_timeout: float, secure: bool = False
) -> int:
    """The whole demo; returns 0 when the loop closed (a job ended, traffic went on). With
    ``secure``, on an `atlas up --secure` stack: each process uses its role's credentials
    (this one plays the agent, and watches jobs as the operator), and prompts are signed."""
    from atlas.agent import Backends, load_agent_config
    from atlas.simulation import SimulatedUser
    from consumers.jobs import TERMINAL, read_job_states
    from runtime.core import Runtime
    from runtime.policy import ModePolicy
    from runtime.producer import EventProducer
    from runtime.prompts import PromptSubscriber
    from runtime.tasks import generate
    from store.client import connect
    from store.queries import StoreRecentRewards

    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    agent = f"demo-{run_id}"
    since = datetime.now(UTC)
    home = settings.home / "demo" / run_id
    configs = write_configs(settings.config_dir, home / "configs", plan.configs())
    settings = settings.model_copy(update={"config_dir": configs})
    started = Started()
    say = lambda m: console.print(f"[dim]{m}[/]")  # noqa: E731
    prompts = None
    try:
        status = stack.read_status(settings)
        if not (settings.kafka_bootstrap or status.kafka_running) or not (
            settings.clickhouse_url or status.store_running
        ):
            with console.status("starting the local stack (Kafka + ClickHouse store)"):
                stack.up(settings, say=lambda m: None, secure=secure)
            started.stack = True
        elif secure and not (status.kafka and status.kafka.secure):
            raise StackError("the running stack is not secure: `atlas down`, then rerun")
        kafka = settings.kafka_config("agent")
        codec = settings.codec()  # the deployment's: its schema registry, its size limits
        watching = settings.kafka_config("operator")
        env = {
            **os.environ,
            "ATLAS_HOME": str(settings.home),
            "ATLAS_CONFIG_DIR": str(configs),
            "ATLAS_REFLECTION_BACKEND": "none",
            "ATLAS_WORKER_ID": f"demo-{uuid.uuid4().hex[:6]}",
        }
        for name in WORKERS:
            started.workers.append((name, start_worker(name, env, home / "logs")))
        pids = ", ".join(f"{n} (pid {p.pid})" for n, p in started.workers)
        say(f"workers: {pids}; logs in {home / 'logs'}")
        config = load_agent_config(configs)
        with console.status("loading the offline model"):
            student, teacher = Backends(settings).student_and_teacher()
            prompts = PromptSubscriber(
                kafka, config.seeds(), codec, verifier=settings.verifier()
            ).start()
        store = connect(settings.store())
        runtime = Runtime(
            agent,
            student,
            teacher,
            prompts,
            ModePolicy(config.policy, StoreRecentRewards(store, 1)),
            config.limits,
        )
        users = SimulatedUser(noise=0.1, seed=7)

        supply = {
            "train": iter(generate(plan.task, "train", plan.before, seed=11)),
            "validation": iter(
                generate(plan.task, "validation", plan.after + 2 * plan.rollout_tasks, seed=11)
            ),
        }
        ran = 0

        def traffic(label: str, n: int, stop: Callable[[], bool] = lambda: False) -> int:
            """``n`` tasks (the morning's from train, later ones from validation), in chunks
            of 8 until ``stop``; how many ran."""
            nonlocal ran
            tasks = list(islice(supply["train" if ran < plan.before else "validation"], n))
            done = 0
            with (
                EventProducer(kafka, codec=codec) as producer,
                Progress(console=console) as progress,
            ):
                bar = progress.add_task(f"{label}: {agent} on {plan.task}", total=len(tasks))
                while done < len(tasks) and not stop():
                    chunk = tasks[done : done + 8]
                    for task, event in zip(chunk, runtime.run_many(chunk), strict=True):
                        producer.record_interaction(event)
                        users.react(task, event, producer)
                    done += len(chunk)
                    progress.advance(bar, len(chunk))
                    check_workers()
            ran += done
            return done

        def check_workers() -> None:
            for name, process in started.workers:
                if not pid_alive(process.pid, "atlas.cli"):
                    raise RuntimeError(f"the {name} worker died; see {home / 'logs' / name}.log")

        traffic("morning traffic", plan.before)
        job = None
        deadline = time.monotonic() + job_timeout
        with console.status("waiting for the retrain policy's trigger") as waiting:
            while time.monotonic() < deadline:
                check_workers()
                jobs = read_job_states(watching, codec).values()
                mine = [s for s in jobs if s.agent_id == agent]
                if mine:
                    job = mine[0]
                    waiting.update(
                        f"GEPA job {job.job_id}: {job.state}"
                        + (f" {job.progress:.0%}" if job.progress is not None else "")
                        + f" - {job.message[:90]}"
                    )
                    if job.state in TERMINAL:
                        break
                time.sleep(2)
        if job is None or job.state not in TERMINAL:
            last = "no job yet" if job is None else f"last {job.state}: {job.message}"
            raise TimeoutError(
                f"no finished GEPA job for {agent} within {job_timeout:.0f}s ({last});"
                " a machine busy with other work is slower: rerun with a larger --job-timeout"
            )
        console.print(f"job {job.job_id} ended [bold]{job.state}[/]: {job.message}")
        rollouts = []
        if job.state == "SUCCEEDED" and job.result_version is not None:
            version = job.result_version
            if plan.canary_share and prompts.wait_for(agent, "student", version, 60, CANARY):
                learned = prompts.labelled(agent, CANARY)["student"]
                rollouts.append(
                    run_rollout(
                        "learned prompt",
                        learned,
                        prompts,
                        traffic,
                        plan.rollout_tasks,
                        settings,
                        store,
                    )
                )
                console.print(f"rollout of the learned prompt: {rollouts[-1].outcome}")
            else:
                prompts.wait_for(agent, "student", version, timeout=60)
                console.print(f"hot-swapped: {agent} uses student prompt v{version}")
        if plan.canary_share:
            worse = worse_candidate(prompts, agent, plan.task, plan.canary_share)
            publish_as_learner(settings, [worse])  # as the learner, signed: like GEPA's
            console.print(
                f"published student v{worse.version} (wrong demonstrations, past no gate) as a"
                f" canary on {plan.canary_share:.0%} of tasks"
            )
            rollouts.append(
                run_rollout(
                    "worse candidate", worse, prompts, traffic, plan.rollout_tasks, settings, store
                )
            )
            console.print(f"rollout of the worse candidate: {rollouts[-1].outcome}")
        traffic("evening traffic", plan.after)
        total = ran
        deadline = time.monotonic() + 120
        with console.status("waiting for the sink to store every trace"):
            while time.monotonic() < deadline:
                stored = store.query(
                    "SELECT count() FROM latest_traces WHERE agent_id = {a:String}",
                    parameters={"a": agent},
                ).result_rows[0][0]
                if stored >= total:
                    break
                time.sleep(2)
        gate = (DEMO_NON_DEGRADATION, DEMO_RETENTION)
        report(console, store, agent, since, job, home, gate, rollouts)
        return 0
    finally:
        if prompts is not None:
            prompts.close()
        started.stop(settings, say)
