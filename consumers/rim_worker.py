"""The RIM calibration job (`atlas retrain rim`, run by `atlas worker rim`): the agent's traces
with human feedback in the trigger's window -> train / held-out split -> judge weights and a
monotone score map fitted on train (``trainer/calibration.py``) -> agreement with the humans on
the held-out traces, current configuration vs calibrated -> the agreement gate
(``trainer.evaluation.agreement_gate``) -> a new version of the agent's ``rim`` role on
``atlas.prompts.v1``, in one transaction with the SUCCEEDED report (signed by the learner).

Like every job it ends FAILED when the window holds too few labelled traces (the message says
how many of each split it found and needs) and REJECTED, with both sides' figures, when the
calibration does not agree better with the people on the held-out traces. It follows the
learning-job skeleton's sequence and reports (``consumers/learning_job.py``) but not its code:
its data are judge scores and human scores of stored traces, not tasks to run an agent on, and
its gate compares agreement, not rewards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from consumers.jobs import JobReporter
from consumers.learning_job import window_of
from rim.calibration import RIM_ROLE, Calibration
from rim.config import RimConfig
from runtime.prompts import current_labels, newest_versions
from schemas.codec import AvroCodec
from schemas.models import PRODUCTION, PromptVersion, RetrainTrigger
from store.monitoring import labelled_traces
from trainer.calibration import CalibrationConfig, Labelled, calibrate


@dataclass
class RimJobContext:
    kafka_config: dict[str, str]
    connect_store: Callable[[], Client]
    rim_config: RimConfig  # version 0 of every agent: configs/rim.yaml
    config: CalibrationConfig
    codec: AvroCodec | None = None


def current_calibration(
    ctx: RimJobContext, agent_id: str
) -> tuple[PromptVersion | None, Calibration, int]:
    """The agent's RIM version in production (None: version 0, the configured one), its
    calibration, and the highest rim version under any label (for the next number)."""
    labels = current_labels(ctx.kafka_config, agent_id, ctx.codec)
    production = labels.get((RIM_ROLE, PRODUCTION))
    newest = newest_versions(labels).get(RIM_ROLE, 0)
    if production is None:
        return None, ctx.rim_config.as_calibration(), newest
    return production, Calibration.from_text(production.text), newest


def run_rim_job(trigger: RetrainTrigger, reporter: JobReporter, ctx: RimJobContext) -> None:
    """One calibration job for ``trigger`` (its budget and params over ``ctx.config``)."""
    config = ctx.config.with_overrides(trigger.budget, trigger.params)
    agent = trigger.agent_id
    reporter.report("RUNNING", "reading the traces people gave feedback on", progress=0.0)
    since, until = window_of(trigger)
    rows = labelled_traces(ctx.connect_store(), agent, since, until, config.max_traces)
    production, current, newest = current_calibration(ctx, agent)
    current_version = 0 if production is None else production.version
    reporter.report(
        "RUNNING",
        f"fitting on {len(rows)} labelled traces, from rim v{current_version}",
        progress=0.3,
    )
    outcome = calibrate([Labelled(*row) for row in rows], current, config)
    metrics = {**outcome.metrics, "current_rim_version": float(current_version)}
    if outcome.state == "FAILED":
        window = f"{since:%Y-%m-%d %H:%M}..{until:%Y-%m-%d %H:%M}"
        reporter.report("FAILED", f"not enough traces with human feedback in {window}:"
                        f" {outcome.reason}", metrics=metrics)  # fmt: skip
        return
    if outcome.state == "REJECTED" or outcome.candidate is None:
        reporter.report("REJECTED", outcome.reason, progress=1.0, metrics=metrics)
        return
    assert outcome.before is not None and outcome.after is not None
    published = PromptVersion(
        agent_id=agent,
        role=RIM_ROLE,
        version=max(current_version, newest) + 1,
        parent_version=current_version,
        text=outcome.candidate.to_text(),
        source="calibration",
        job_id=reporter.job_id,
        trigger_id=trigger.trigger_id,
        window_start=since,
        window_end=until,
        # for a rim version, "reward" is agreement with the humans: 1 - held-out MAE
        heldout_reward=1.0 - outcome.after.mae,
        baseline_reward=1.0 - outcome.before.mae,
    )
    reporter.report(
        "SUCCEEDED",
        f"published rim v{published.version}: {outcome.reason}",
        progress=1.0,
        metrics=metrics,
        result_version=published.version,
        publish=[published],
    )
