"""The GEPA job: the learning-job skeleton (``consumers/learning_job.py``) with GEPA plugged in:
production prompts -> GEPA on train/validation -> held-out comparison -> prompt versions. And
the same held-out comparison for an operator's own prompt (``gate_manual_prompts``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clickhouse_connect.driver.client import Client

from consumers.jobs import JobReporter, fresh_run_dir
from consumers.learning_job import Material, Publication, Trained, gather, run_learning_job
from rim.reward import Rim
from runtime.backends.base import ModelBackend
from runtime.memory import current_memory
from runtime.prompts import (
    StaticPrompts,
    current_labels,
    current_prompts,
    newest_versions,
    next_versions,
)
from schemas.codec import AvroCodec
from schemas.models import CANARY, Lineage, PromptVersion, RetrainTrigger
from trainer.datasets import DatasetConfig
from trainer.demonstrations import DEMONSTRATIONS, decode, encode
from trainer.evaluation import (
    MEMORY_POLICY,
    GateDecision,
    PromptEvaluator,
    compare_on_heldout,
    measure,
)
from trainer.gepa_config import GepaConfig
from trainer.gepa_engine import GepaOutcome, evolve_prompts, reflection_lm

Production = dict[str, PromptVersion]


def as_candidate(current: Production) -> dict[str, str]:
    """Production prompts as a candidate: texts per role plus the student's shots and memory
    policy (which GEPA measures with but never changes)."""
    return {
        **{role: version.text for role, version in current.items()},
        DEMONSTRATIONS: encode(current["student"].demonstrations),
        MEMORY_POLICY: current["student"].memory.model_dump_json(),
    }


@dataclass
class GepaJobContext:
    kafka_config: dict[str, str]
    connect_store: Callable[[], Client]
    student: ModelBackend
    teacher: ModelBackend
    reflection: ModelBackend | None
    rim: Rim
    config: GepaConfig
    seed_prompts: StaticPrompts
    run_root: Path | None = None
    codec: AvroCodec | None = None  # the deployment's (its schema registry); None = plain
    memory_role: str | None = None  # whose memory entries the student is shown; None: no memory

    def production(self, agent_id: str) -> Production:
        """The prompt versions the agent's runtime uses now."""
        return current_prompts(self.kafka_config, agent_id, self.seed_prompts, self.codec)

    def labels(self, agent_id: str) -> dict[tuple[str, str], PromptVersion]:
        """Every label of the agent's prompts now: (role, label) -> version."""
        return current_labels(self.kafka_config, agent_id, self.codec)

    def evaluator(self, agent_id: str, config: GepaConfig) -> PromptEvaluator:
        """The agent's loop (its student and teacher, the memory entries it holds now) scored
        by RIM, as ``config`` measures."""
        memory = None
        if self.memory_role is not None:
            memory = current_memory(self.kafka_config, agent_id, self.memory_role, self.codec)
        return PromptEvaluator(
            agent_id,
            self.student,
            self.teacher,
            self.rim,
            config.eval_mode,
            config.limits,
            config.eval_batch_size,
            memory,
        )


@dataclass(frozen=True)
class GepaJob:
    """GEPA as a ``LearningJob``; its result is production and GEPA's outcome."""

    ctx: GepaJobContext
    config: GepaConfig

    @property
    def dataset(self) -> DatasetConfig:
        return self.config.dataset

    def shortage(self, material: Material) -> str | None:
        sizes = material.splits.sizes()
        if all(sizes.values()):
            return None
        return (
            f"not enough examples in {material.since:%Y-%m-%d %H:%M}..{material.until:%H:%M}:"
            f" {sizes} from {material.stored_traces} stored trace(s) with a reference or an edit"
        )

    def train(
        self, material: Material, reporter: JobReporter
    ) -> Trained[tuple[Production, GepaOutcome]]:
        ctx, config, splits = self.ctx, self.config, material.splits
        current = ctx.production(material.agent_id)
        edited = sum(e.user_edit is not None for e in splits.train + splits.validation)
        sizes = splits.sizes()
        components = config.optimized_components(ctx.reflection is not None, True)
        reporter.report(
            "RUNNING",
            f"optimizing {', '.join(components)} on {sizes['train']} train /"
            f" {sizes['validation']} validation examples ({edited} user edits),"
            f" budget {config.budget}",
            progress=0.0,
            metrics={f"{k}_examples": float(v) for k, v in sizes.items()},
        )
        # GEPA resumes from a pickled state in its run folder: always a fresh, private one
        run_dir = fresh_run_dir(ctx.run_root, reporter.job_id) if ctx.run_root else None
        outcome = evolve_prompts(
            as_candidate(current),
            splits,
            ctx.evaluator(material.agent_id, config),
            reflection_lm(ctx.reflection, config) if ctx.reflection is not None else None,
            config,
            progress=reporter.progress,
            run_dir=run_dir,
        )
        return Trained(outcome.decision, outcome.metrics(), (current, outcome))

    def publish(
        self,
        result: tuple[Production, GepaOutcome],
        lineage: Lineage,
        metrics: dict[str, float],
    ) -> Publication:
        current, outcome = result
        texts = {r: outcome.best[r] for r in outcome.changed_roles if r != DEMONSTRATIONS}
        shots = {}
        if DEMONSTRATIONS in outcome.changed_roles:
            shots["student"] = decode(outcome.best[DEMONSTRATIONS])
        labels = self.ctx.labels(next(iter(current.values())).agent_id)
        versions = next_versions(
            current, texts, "gepa", shots, lineage, newest=newest_versions(labels)
        )
        versions = [self.config.as_published(v, labels.get((v.role, CANARY))) for v in versions]
        summary = ", ".join(
            f"{v.role} v{v.version}"
            + (f" with {len(v.demonstrations)} demonstrations" if v.demonstrations else "")
            + self.config.published_as(v)
            for v in versions
        )
        return Publication(versions, summary, max(v.version for v in versions))


def run_gepa_job(trigger: RetrainTrigger, reporter: JobReporter, ctx: GepaJobContext) -> None:
    """One GEPA job for ``trigger`` (its budget and params over ``ctx.config``)."""
    config = ctx.config.with_overrides(trigger.budget, trigger.params)
    run_learning_job(trigger, reporter, ctx.connect_store, GepaJob(ctx, config))


def gate_manual_prompts(
    ctx: GepaJobContext,
    agent_id: str,
    proposed: dict[str, str],
    since: datetime,
    families: list[str],
) -> tuple[Production, GateDecision]:
    """The gate GEPA's candidates face, for an operator's own text: production vs proposed on
    the held-out split of the agent's stored traces since ``since`` (plus the named built-in
    families). ValueError, and nothing evaluated, when there is no held-out example."""
    config = ctx.config
    material = gather(
        ctx.connect_store, agent_id, since, datetime.now(UTC), config.dataset, families
    )
    if not material.splits.heldout:
        raise ValueError(
            "no held-out examples: the agent has no stored traces with a reference or an edit"
            " in the window; name a built-in task family with --task, or use --force"
        )
    current = ctx.production(agent_id)
    texts = as_candidate(current)
    evaluator = ctx.evaluator(agent_id, config)
    comparison = compare_on_heldout(
        material.splits.heldout,
        measure(evaluator, texts),
        measure(evaluator, {**texts, **proposed}),
        config.gate,
    )
    return current, comparison.decision
