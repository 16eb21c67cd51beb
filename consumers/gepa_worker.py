"""The GEPA job: stored traces -> datasets -> GEPA -> gate -> published prompt versions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from clickhouse_connect.driver.client import Client

from consumers.jobs import JobReporter, fresh_run_dir
from rim.reward import Rim
from runtime.backends.base import ModelBackend
from runtime.prompts import current_prompts, next_versions
from schemas.codec import AvroCodec
from schemas.models import PromptVersion, RetrainTrigger
from store.queries import training_traces
from trainer.datasets import build_splits
from trainer.demonstrations import DEMONSTRATIONS, decode, encode
from trainer.evaluation import GateDecision, PromptEvaluator, gate
from trainer.gepa_engine import GepaConfig, GepaOutcome, evolve_prompts, reflection_lm

log = logging.getLogger(__name__)
DEFAULT_WINDOW = timedelta(hours=24)


def as_candidate(current: dict[str, PromptVersion]) -> dict[str, str]:
    """Production prompts as a GEPA candidate: texts per role plus the student's shots."""
    return {
        **{role: version.text for role, version in current.items()},
        DEMONSTRATIONS: encode(current["student"].demonstrations),
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
    seed_prompts: dict[str, str]
    run_root: Path | None = None
    codec: AvroCodec | None = None  # the deployment's (its schema registry); None = plain


def run_gepa_job(trigger: RetrainTrigger, reporter: JobReporter, ctx: GepaJobContext) -> None:
    config = ctx.config.with_overrides(trigger.budget, trigger.params)
    reporter.report("RUNNING", "building datasets from the store", progress=0.0)
    until = trigger.window_end or datetime.now(UTC)
    since = trigger.window_start or until - DEFAULT_WINDOW
    traces = training_traces(ctx.connect_store(), trigger.agent_id, since, until)
    splits = build_splits(traces, config.dataset)
    sizes = splits.sizes()
    edited = sum(e.user_edit is not None for e in splits.train + splits.validation)
    log.info("job %s: %d stored traces -> %s", reporter.job_id, len(traces), sizes)
    if not all(sizes.values()):
        reporter.report(
            "FAILED",
            f"not enough examples in {since:%Y-%m-%d %H:%M}..{until:%H:%M}: {sizes}"
            f" from {len(traces)} stored trace(s) with a reference or an edit",
        )
        return
    current = current_prompts(ctx.kafka_config, trigger.agent_id, ctx.seed_prompts, ctx.codec)
    evaluator = PromptEvaluator(
        trigger.agent_id,
        ctx.student,
        ctx.teacher,
        ctx.rim,
        config.eval_mode,
        config.limits,
        config.eval_batch_size,
    )
    reporter.report(
        "RUNNING",
        f"optimizing {', '.join(config.optimized_components(ctx.reflection is not None, True))}"
        f" on {sizes['train']} train /"
        f" {sizes['validation']} validation examples ({edited} user edits), budget {config.budget}",
        progress=0.0,
        metrics={f"{k}_examples": float(v) for k, v in sizes.items()},
    )
    # GEPA resumes from a pickled state in its run folder: always a fresh, private one
    run_dir = fresh_run_dir(ctx.run_root, reporter.job_id) if ctx.run_root else None
    outcome = evolve_prompts(
        as_candidate(current),
        splits,
        evaluator,
        reflection_lm(ctx.reflection, config) if ctx.reflection is not None else None,
        config,
        progress=reporter.progress,
        run_dir=run_dir,
    )
    finish(trigger, reporter, current, outcome, since, until, len(traces))


def finish(
    trigger: RetrainTrigger,
    reporter: JobReporter,
    current: dict[str, PromptVersion],
    outcome: GepaOutcome,
    since: datetime,
    until: datetime,
    stored_traces: int,
) -> None:
    decision = outcome.decision
    metrics = {**outcome.metrics(), "stored_traces": float(stored_traces)}
    if not decision.passed:
        reporter.report("REJECTED", decision.reason, progress=1.0, metrics=metrics)
        return
    texts = {r: outcome.best[r] for r in outcome.changed_roles if r != DEMONSTRATIONS}
    shots = {}
    if DEMONSTRATIONS in outcome.changed_roles:
        shots["student"] = decode(outcome.best[DEMONSTRATIONS])
    versions = next_versions(
        current,
        texts,
        "gepa",
        shots,
        job_id=reporter.job_id,
        trigger_id=trigger.trigger_id,
        window_start=since,
        window_end=until,
        heldout_reward=decision.candidate_reward,
        baseline_reward=decision.current_reward,
        non_degradation=decision.non_degradation,
    )
    published = ", ".join(
        f"{v.role} v{v.version}"
        + (f" with {len(v.demonstrations)} demonstrations" if v.demonstrations else "")
        for v in versions
    )
    reporter.report(
        "SUCCEEDED",
        f"published {published}: {decision.reason}",
        progress=1.0,
        metrics=metrics,
        result_version=max(v.version for v in versions),
        publish=versions,
    )


def gate_manual_prompts(
    ctx: GepaJobContext,
    agent_id: str,
    proposed: dict[str, str],
    since: datetime,
    families: list[str],
) -> tuple[dict[str, PromptVersion], GateDecision]:
    """The gate GEPA's candidates face, for an operator's own text: production vs proposed on
    the held-out split of the agent's stored traces (plus the named built-in families)."""
    config = ctx.config
    traces = training_traces(ctx.connect_store(), agent_id, since, datetime.now(UTC))
    heldout = build_splits(traces, config.dataset, families).heldout
    if not heldout:
        raise ValueError(
            "no held-out examples: the agent has no stored traces with a reference or an edit"
            " in the window; name a built-in task family with --task, or use --force"
        )
    current = current_prompts(ctx.kafka_config, agent_id, ctx.seed_prompts, ctx.codec)
    texts = as_candidate(current)
    evaluator = PromptEvaluator(
        agent_id,
        ctx.student,
        ctx.teacher,
        ctx.rim,
        config.eval_mode,
        config.limits,
        config.eval_batch_size,
    )
    before = [s.reward.score for s in evaluator.evaluate(texts, heldout)]
    after = [s.reward.score for s in evaluator.evaluate({**texts, **proposed}, heldout)]
    return current, gate(after, before, config.gate)
