"""The GRPO job: the learning-job skeleton (``consumers/learning_job.py``) with GRPO plugged in:
DeepSpeed GRPO in a child process -> held-out comparison of the current and trained models ->
checkpoint.

The trainer runs under the deepspeed launcher as a child process that dies with the worker
(PR_SET_PDEATHSIG) and is killed with its process group when the job ends any other way; its
per-step JSON lines become RUNNING reports. A trained model is published only if the held-out
gate passes: files under the checkpoint store with a JSON card (sha256 of every file), then a
CheckpointEvent in the same transaction as the SUCCEEDED report.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from consumers.jobs import JobReporter, fresh_run_dir
from consumers.learning_job import Material, Publication, Trained, run_learning_job
from rim.reward import Rim
from runtime.backends.base import ModelBackend
from runtime.backends.local import LocalBackend
from runtime.checkpoints import CARD, checkpoint_labels, current_checkpoints, sha256_of, verify
from runtime.prompts import StaticPrompts, current_prompts, newest_versions
from runtime.turns import GenerationLimits
from schemas.codec import AvroCodec
from schemas.models import CANARY, CheckpointEvent, Lineage, RetrainTrigger, under
from trainer.datasets import DatasetConfig, Example
from trainer.evaluation import Measure, OnBatch, PromptEvaluator, Scored, compare_on_heldout
from trainer.grpo_config import GrpoConfig

log = logging.getLogger(__name__)


@dataclass
class GrpoJobContext:
    kafka_config: dict[str, str]
    connect_store: Callable[[], Client]
    student: ModelBackend
    rim: Rim
    config: GrpoConfig
    config_dir: Path
    seed_prompts: StaticPrompts
    base_model_dir: Path
    base_model_name: str
    checkpoint_root: Path
    run_root: Path
    codec: AvroCodec | None = None  # the deployment's (its schema registry); None = plain


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def trainer_command(spec: Path) -> list[str]:
    """The deepspeed launcher, one local process, no --local_rank argument."""
    launcher = Path(sys.executable).parent / "deepspeed"
    return [
        str(launcher),
        "--num_gpus",
        "1",
        "--no_local_rank",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "--module",
        "trainer.grpo_run",
        str(spec),
    ]


def run_trainer(spec: Path, steps: int, reporter: JobReporter, log_path: Path) -> dict[str, float]:
    """Run the child to the end; returns the last step's metrics and the ZeRO stage."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    import torch

    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    tail: deque[str] = deque(maxlen=30)
    last: dict[str, float] = {}
    with log_path.open("w") as log_file:
        child = subprocess.Popen(
            trainer_command(spec),
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            assert child.stdout is not None
            for line in child.stdout:
                tail.append(line.rstrip())
                if not line.startswith("{"):
                    continue
                record = json.loads(line)
                if record.get("event") == "start":
                    last["zero_stage"] = float(record["zero_stage"])
                elif record.get("event") == "step":
                    last.update({k: v for k, v in record.items() if k != "event"})
                    reporter.progress(
                        0.7 * record["step"] / steps,
                        f"step {int(record['step'])}/{steps}: reward {record['reward']:.3f}"
                        f" kl {record['kl']:.4f} loss {record['loss']:.4f}"
                        f" ({record['seconds']:.1f}s)",
                    )
            code = child.wait()
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
                child.wait(30)
    if code != 0:
        errors = log_path.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"trainer exited with {code}: " + " | ".join(errors or list(tail)))
    return last


def publish_files(source: Path, target: Path, card: dict[str, object]) -> dict[str, str]:
    """Copy the model files into the checkpoint store; write the card; sha256 per file."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    digests = {p.name: sha256_of(p) for p in sorted(staging.iterdir()) if p.is_file()}
    (staging / CARD).write_text(json.dumps({**card, "sha256": digests}, indent=2, default=str))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return digests


def write_spec(
    run_dir: Path,
    config: GrpoConfig,
    ctx: GrpoJobContext,
    start_dir: Path,
    prompts: dict[str, str],
    train: Sequence[Example],
) -> Path:
    """The trainer's spec (``trainer/grpo_run.py``) in ``run_dir``: everything it needs."""
    spec = run_dir / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "config": config.model_dump(),
                "config_dir": str(ctx.config_dir),
                "model_dir": str(start_dir),
                "student_dir": str(ctx.base_model_dir),
                "output_dir": str(run_dir / "model"),
                "prompts": prompts,
                "examples": [
                    {
                        "input": e.task.input,
                        "task_id": e.task.task_id,
                        "family": e.task.family,
                        "reference": e.task.reference,
                        "answer_format": e.task.answer_format,
                    }
                    for e in train
                ],
            }
        )
    )
    return spec


@dataclass(frozen=True)
class TrainedModel:
    """A GRPO run's model, and the checkpoint it started from (None: the base model)."""

    agent_id: str
    parent: CheckpointEvent | None
    model_dir: Path


@dataclass(frozen=True)
class GrpoJob:
    """GRPO as a ``LearningJob``; its result is the trained model."""

    ctx: GrpoJobContext
    config: GrpoConfig

    @property
    def dataset(self) -> DatasetConfig:
        return self.config.dataset

    def shortage(self, material: Material) -> str | None:
        splits = material.splits
        if splits.train and splits.heldout:
            return None
        return f"not enough examples: {splits.sizes()} from {material.stored_traces} traces"

    def train(self, material: Material, reporter: JobReporter) -> Trained[TrainedModel]:
        ctx, config, agent, role = self.ctx, self.config, material.agent_id, self.config.role
        current = current_checkpoints(ctx.kafka_config, agent, [role], ctx.codec).get(role)
        start_dir = verify(current) if current else ctx.base_model_dir
        prompts = {
            r: v.text
            for r, v in current_prompts(
                ctx.kafka_config, agent, ctx.seed_prompts, ctx.codec
            ).items()
        }
        run_dir = fresh_run_dir(ctx.run_root, reporter.job_id)
        spec = write_spec(run_dir, config, ctx, start_dir, prompts, material.splits.train)
        reporter.report(
            "RUNNING",
            f"training the {role} from {start_dir.name}: {config.steps} steps x"
            f" {config.prompts_per_step} prompts x {config.group_size} samples",
            progress=0.0,
        )
        training = run_trainer(spec, config.steps, reporter, run_dir / "trainer.log")
        reporter.report("RUNNING", "held-out evaluation of the current and trained models", 0.7)

        def evaluated(done: int, total: int) -> None:  # production first, then the trained
            if done == total // 2:
                reporter.progress(0.85, "held-out: current evaluated")
            elif done == total:
                reporter.progress(1.0, "held-out: trained evaluated")

        model_dir = run_dir / "model"
        comparison = compare_on_heldout(
            material.splits.heldout,
            self._side(agent, "current", start_dir, prompts),
            self._side(agent, "trained", model_dir, prompts),
            config.gate,
            evaluated,
        )
        decision = comparison.decision
        if not decision.passed:
            shutil.rmtree(model_dir, ignore_errors=True)
        metrics = {
            **decision.metrics(),
            **{f"train_{k}": float(v) for k, v in training.items()},
            "train_examples": float(len(material.splits.train)),
        }
        return Trained(decision, metrics, TrainedModel(agent, current, model_dir))

    def _side(self, agent: str, name: str, folder: Path, prompts: dict[str, str]) -> Measure:
        """One side of the comparison: the model in ``folder`` in the trained role, loaded
        only when its turn comes (the other role stays the student)."""
        role, ctx = self.config.role, self.ctx
        limits = GenerationLimits(answer_tokens=self.config.eval_answer_tokens)

        def run(examples: Sequence[Example], on_batch: OnBatch | None) -> list[Scored]:
            model = LocalBackend(folder, model_name=f"{role}-{name}")
            student = model if role == "student" else ctx.student
            teacher = model if role == "teacher" else ctx.student
            evaluator = PromptEvaluator(
                agent, student, teacher, ctx.rim, self.config.eval_mode, limits
            )
            return evaluator.evaluate(prompts, examples, on_batch)

        return run

    def publish(
        self, result: TrainedModel, lineage: Lineage, metrics: dict[str, float]
    ) -> Publication:
        ctx, role = self.ctx, self.config.role
        parent = result.parent.version if result.parent else 0
        labels = checkpoint_labels(ctx.kafka_config, result.agent_id, ctx.codec)
        # numbered after every labelled version too (a canary or a queued one is no parent)
        version = max(parent, newest_versions(labels).get(role, 0)) + 1
        provenance = lineage.model_dump()
        target = under(ctx.checkpoint_root, result.agent_id, role, f"v{version}")
        digests = publish_files(
            result.model_dir,
            target,
            {
                "base_model": ctx.base_model_name,
                "config": self.config.model_dump(),
                "metrics": metrics,
                "parent_version": parent,
                **provenance,
            },
        )
        event = CheckpointEvent(
            agent_id=result.agent_id,
            role=role,
            version=version,
            parent_version=parent,
            uri=f"file://{target}",
            base_model=ctx.base_model_name,
            sha256=digests,
            source="grpo",
            **provenance,
        )
        event = self.config.as_published(event, labels.get((role, CANARY)))
        summary = f"{role} checkpoint v{version}{self.config.published_as(event)}"
        return Publication([event], summary, version)


def run_grpo_job(trigger: RetrainTrigger, reporter: JobReporter, ctx: GrpoJobContext) -> None:
    """One GRPO job for ``trigger`` (its budget and params over ``ctx.config``)."""
    config = ctx.config.with_overrides(trigger.budget, trigger.params)
    run_learning_job(trigger, reporter, ctx.connect_store, GrpoJob(ctx, config))
