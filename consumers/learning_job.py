"""The learning-job skeleton: the one sequence every retrain job follows, engines plugged in.

    trigger -> window -> the agent's stored training traces -> train/validation/held-out
    splits -> the engine (GEPA, GRPO) -> the held-out comparison and gate -> publish, in one
    transaction with the SUCCEEDED report

A job kind is a ``LearningJob``: which splits it needs, what it makes of them (``train``: the
engine, then ``trainer.evaluation.compare_on_heldout``), and what a passed candidate becomes
(``publish``: the events). ``run_learning_job`` does the rest, the same way for every kind:

* the window is the trigger's, or the ``DEFAULT_WINDOW`` up to now where it names none;
* every state change is a report on ``atlas.jobs.v1`` through the job's ``JobReporter``,
  and the job ends with one terminal report: FAILED (too few examples), REJECTED (the gate
  refused: nothing is published, the figures are in the report) or SUCCEEDED; an exception
  goes up to the trigger worker instead, which reports FAILED;
* ``publish`` is called only for a candidate the gate passed, and its events go out in the
  same Kafka transaction as the SUCCEEDED report: readers see both or neither;
* every published version names the job, the trigger, the window and the held-out figures
  (``lineage``); REJECTED and SUCCEEDED carry the job's figures and ``stored_traces``.

An operator's own prompt (``atlas prompts set``) is not a job, but it gathers its held-out
examples with ``gather`` and faces the same comparison.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, Protocol, TypeVar

from clickhouse_connect.driver.client import Client

from consumers.jobs import JobReporter
from schemas.models import Event, Lineage, RetrainTrigger
from store.queries import training_traces
from trainer.datasets import DatasetConfig, Splits, build_splits
from trainer.evaluation import GateDecision

log = logging.getLogger(__name__)
DEFAULT_WINDOW = timedelta(hours=24)
R = TypeVar("R")


def window_of(trigger: RetrainTrigger) -> tuple[datetime, datetime]:
    """The trigger's window of traces: its own bounds, else the ``DEFAULT_WINDOW`` up to its
    end (or now)."""
    until = trigger.window_end or datetime.now(UTC)
    return trigger.window_start or until - DEFAULT_WINDOW, until


@dataclass(frozen=True)
class Material:
    """What a job learns from: the agent's stored traces in [since, until) as splits."""

    agent_id: str
    since: datetime
    until: datetime
    stored_traces: int  # how many traces the store returned, usable or not
    splits: Splits


def gather(
    connect_store: Callable[[], Client],
    agent_id: str,
    since: datetime,
    until: datetime,
    dataset: DatasetConfig,
    families: Sequence[str] = (),
) -> Material:
    """The agent's training traces in the window, split (``trainer.datasets.build_splits``:
    no input in two splits, built-in tasks of the families seen and of ``families`` added)."""
    traces = training_traces(connect_store(), agent_id, since, until)
    splits = build_splits(traces, dataset, families)
    return Material(agent_id, since, until, len(traces), splits)


@dataclass(frozen=True)
class Trained(Generic[R]):
    """An engine's candidate after the held-out comparison."""

    decision: GateDecision
    metrics: dict[str, float]  # the job's figures (the skeleton adds ``stored_traces``)
    result: R  # what ``publish`` needs of it


@dataclass(frozen=True)
class Publication:
    """What a passed candidate became: the events to publish with the SUCCEEDED report, the
    report's ``published {summary}`` and its ``result_version``."""

    events: Sequence[Event]
    summary: str
    version: int


class LearningJob(Protocol[R]):
    """One kind of learning job, configured for one trigger."""

    @property
    def dataset(self) -> DatasetConfig:
        """How the stored traces become splits."""
        ...

    def shortage(self, material: Material) -> str | None:
        """Why these splits are too small for this engine (the FAILED message), or None."""
        ...

    def train(self, material: Material, reporter: JobReporter) -> Trained[R]:
        """Run the engine (reporting RUNNING as it goes) and compare its candidate with
        production on ``material.splits.heldout``; a refused candidate leaves no files."""
        ...

    def publish(self, result: R, lineage: Lineage, metrics: dict[str, float]) -> Publication:
        """Make the passed candidate publishable (files first, where it has any); each event
        carries ``lineage``. Nothing goes out here: the skeleton sends the events."""
        ...


def lineage(reporter: JobReporter, material: Material, decision: GateDecision) -> Lineage:
    """What every published version says about where it came from."""
    return decision.lineage(
        Lineage(
            job_id=reporter.job_id,
            trigger_id=reporter.trigger.trigger_id,
            window_start=material.since,
            window_end=material.until,
        )
    )


def run_learning_job(
    trigger: RetrainTrigger,
    reporter: JobReporter,
    connect_store: Callable[[], Client],
    job: LearningJob[R],
) -> None:
    """The sequence in the module docstring, for ``trigger``, reported through ``reporter``."""
    reporter.report("RUNNING", "building datasets from the store", progress=0.0)
    since, until = window_of(trigger)
    material = gather(connect_store, trigger.agent_id, since, until, job.dataset)
    log.info(
        "job %s: %d stored traces -> %s",
        reporter.job_id,
        material.stored_traces,
        material.splits.sizes(),
    )
    shortage = job.shortage(material)
    if shortage is not None:
        reporter.report("FAILED", shortage)
        return
    trained = job.train(material, reporter)
    decision = trained.decision
    metrics = {**trained.metrics, "stored_traces": float(material.stored_traces)}
    if not decision.passed:
        reporter.report("REJECTED", decision.reason, progress=1.0, metrics=metrics)
        return
    publication = job.publish(trained.result, lineage(reporter, material, decision), metrics)
    reporter.report(
        "SUCCEEDED",
        f"published {publication.summary}: {decision.reason}",
        progress=1.0,
        metrics=metrics,
        result_version=publication.version,
        publish=publication.events,
    )
