"""The learning-job skeleton with fakes for the store, the engine and the Kafka producer: the
fixed sequence, one transaction for the result and its report, nothing published past a gate
refusal; the one held-out comparison; GEPA's progress through its callback API; and the GEPA
job and the manual-prompt gate plugged into the skeleton (scripted models)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from atlas.settings import PROJECT_CONFIGS
from consumers.gepa_worker import GepaJobContext, gate_manual_prompts, run_gepa_job
from consumers.jobs import JobReporter
from consumers.learning_job import (
    DEFAULT_WINDOW,
    Material,
    Publication,
    Trained,
    run_learning_job,
)
from rim.config import build_rim, load_rim_config
from runtime.prompts import StaticPrompts
from runtime.tasks import generate
from schemas.models import (
    CheckpointEvent,
    Event,
    JobStatus,
    Lineage,
    PromptVersion,
    RetrainTrigger,
)
from store.queries import TrainingTrace
from tests.fakes import ScriptedTaskWorld
from trainer.datasets import DatasetConfig, Example, build_splits
from trainer.evaluation import (
    GateConfig,
    GateDecision,
    PromptEvaluator,
    Scored,
    compare_on_heldout,
    gate,
)
from trainer.gepa_config import GepaConfig
from trainer.gepa_engine import evolve_prompts, reflection_lm

SEEDS = {"student": "You are a helpful assistant.", "teacher": "You are a reviewer."}
COLUMNS = [
    "trace_id",
    "task_id",
    "task_family",
    "task_input",
    "reference",
    "final_answer",
    "reward",
    "human_score",
    "edited_text",
    "rationale",
]


class FakeProducer:
    """Stands in for the TransactionalProducer: each ``send`` is one transaction."""

    def __init__(self) -> None:
        self.transactions: list[list[Event]] = []

    def send(self, events: Sequence[Event]) -> None:
        self.transactions.append(list(events))

    def reports(self) -> list[JobStatus]:
        return [e for t in self.transactions for e in t if isinstance(e, JobStatus)]


@dataclass
class FakeStore:
    """Stands in for the ClickHouse client: answers the training-traces query."""

    traces: list[TrainingTrace]
    asked: list[dict[str, Any]] = field(default_factory=list)

    def query(self, _sql: str, parameters: dict[str, Any]) -> Any:
        self.asked.append(parameters)

        rows = [[getattr(t, c) for c in COLUMNS] for t in self.traces]
        return SimpleNamespace(column_names=COLUMNS, result_rows=rows)


def arithmetic_traces(n: int = 30) -> list[TrainingTrace]:
    return [
        TrainingTrace(
            f"t{i}", t.task_id, "arithmetic", t.input, t.reference, "0", 0.2, None, None, ""
        )
        for i, t in enumerate(generate("arithmetic", "test", n, seed=5))
    ]


def decision(passed: bool) -> GateDecision:
    return GateDecision(passed, 0.9, 0.5, 1.0, None, 30, "the reason" if passed else "refused")


@dataclass
class FakeEngine:
    """A LearningJob whose engine and gate outcome are given; records what happened."""

    passes: bool
    needs_examples: bool = False
    calls: list[str] = field(default_factory=list)
    material: Material | None = None
    lineage: Lineage | None = None

    @property
    def dataset(self) -> DatasetConfig:
        return DatasetConfig(builtin_pool=5)

    def shortage(self, material: Material) -> str | None:
        self.calls.append("shortage")
        self.material = material
        return "too few" if self.needs_examples else None

    def train(self, material: Material, reporter: JobReporter) -> Trained[str]:
        self.calls.append("train")
        reporter.report("RUNNING", "engine running", progress=0.5)
        return Trained(decision(self.passes), {"engine_figure": 1.0}, "model")

    def publish(self, result: str, lineage: Lineage, metrics: dict[str, float]) -> Publication:
        self.calls.append(f"publish {result}")
        self.lineage = lineage
        event = CheckpointEvent(
            agent_id="a",
            role="student",
            version=3,
            parent_version=2,
            uri="file:///x",
            base_model="base",
            source="grpo",
            **lineage.model_dump(),
        )
        return Publication([event], "student checkpoint v3", 3)


def _run(engine: FakeEngine, trigger: RetrainTrigger) -> tuple[FakeProducer, FakeStore]:
    producer, store = FakeProducer(), FakeStore(arithmetic_traces())
    reporter = JobReporter(producer, trigger, "w1")  # type: ignore[arg-type]
    run_learning_job(trigger, reporter, lambda: store, engine)  # type: ignore[arg-type]
    return producer, store


def test_a_passed_candidate_is_published_in_the_same_transaction_as_its_report() -> None:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    trigger = RetrainTrigger(
        kind="grpo", agent_id="a", reason="t", window_start=start, window_end=start + DEFAULT_WINDOW
    )
    engine = FakeEngine(passes=True)
    producer, store = _run(engine, trigger)
    assert engine.calls == ["shortage", "train", "publish model"]
    assert (store.asked[0]["since"], store.asked[0]["until"]) == (start, start + DEFAULT_WINDOW)
    assert engine.material is not None and engine.material.stored_traces == 30
    reports = producer.reports()
    assert [(r.state, r.message) for r in reports] == [
        ("RUNNING", "building datasets from the store"),
        ("RUNNING", "engine running"),
        ("SUCCEEDED", "published student checkpoint v3: the reason"),
    ]
    assert [r.seq for r in reports] == [1, 2, 3]
    *_, last = producer.transactions
    assert [type(e) for e in last] == [CheckpointEvent, JobStatus]  # one transaction, both
    done = reports[-1]
    assert done.result_version == 3 and done.progress == 1.0
    assert done.metrics["engine_figure"] == 1.0 and done.metrics["stored_traces"] == 30.0
    assert engine.lineage == Lineage(
        job_id=done.job_id,
        trigger_id=trigger.trigger_id,
        window_start=start,
        window_end=start + DEFAULT_WINDOW,
        heldout_reward=0.9,
        baseline_reward=0.5,
        non_degradation=1.0,
    )


def test_a_gate_refusal_publishes_nothing_and_reports_rejected_with_the_figures() -> None:
    engine = FakeEngine(passes=False)
    producer, _ = _run(engine, RetrainTrigger(kind="gepa", agent_id="a", reason="t"))
    assert engine.calls == ["shortage", "train"]  # publish is never asked
    assert all(isinstance(e, JobStatus) for t in producer.transactions for e in t)
    last = producer.reports()[-1]
    assert (last.state, last.message, last.result_version) == ("REJECTED", "refused", None)
    assert last.metrics["engine_figure"] == 1.0 and last.metrics["stored_traces"] == 30.0


def test_too_few_examples_fail_the_job_before_the_engine_runs() -> None:
    engine = FakeEngine(passes=True, needs_examples=True)
    producer, _ = _run(engine, RetrainTrigger(kind="gepa", agent_id="a", reason="t"))
    assert engine.calls == ["shortage"]
    assert [(r.state, r.message) for r in producer.reports()][-1] == ("FAILED", "too few")


def test_a_trigger_without_a_window_takes_the_default_one_up_to_now() -> None:
    before = datetime.now(UTC)
    _, store = _run(FakeEngine(passes=False), RetrainTrigger(kind="gepa", agent_id="a", reason="t"))
    since, until = store.asked[0]["since"], store.asked[0]["until"]
    assert before <= until <= datetime.now(UTC) and until - since == DEFAULT_WINDOW


def _examples(n: int) -> list[Example]:
    return [Example(t, "builtin") for t in generate("arithmetic", "test", n)]


def _fixed(score: float, order: list[str], name: str) -> Any:
    from rim.reward import Reward

    def side(examples: Sequence[Example], on_batch: Any) -> list[Scored]:
        order.append(name)
        if on_batch is not None:
            on_batch(len(examples))
        return [Scored(e, None, Reward(score, [], "", 0.0, False)) for e in examples]  # type: ignore[arg-type]

    return side


def test_the_held_out_comparison_measures_production_first_then_gates() -> None:
    order: list[str] = []
    steps: list[tuple[int, int]] = []
    heldout = _examples(4)
    comparison = compare_on_heldout(
        heldout,
        _fixed(0.5, order, "current"),
        _fixed(0.9, order, "candidate"),
        GateConfig(),
        lambda done, total: steps.append((done, total)),
    )
    assert order == ["current", "candidate"] and steps == [(4, 8), (8, 8)]
    assert comparison.current == [0.5] * 4 and comparison.candidate == [0.9] * 4
    assert comparison.decision == gate([0.9] * 4, [0.5] * 4, GateConfig())
    alone = compare_on_heldout(
        heldout, _fixed(0.5, order, "current"), None, GateConfig(), None, "x"
    )
    assert not alone.decision.passed and alone.decision.reason == "x"
    assert alone.candidate == alone.current and alone.decision.n == 4
    with pytest.raises(ValueError, match="no held-out examples"):
        compare_on_heldout([], _fixed(0.5, order, "current"), None, GateConfig())


def _evaluator(world: ScriptedTaskWorld, config: GepaConfig) -> PromptEvaluator:
    rim = build_rim(load_rim_config(PROJECT_CONFIGS))
    return PromptEvaluator("unit", world.student, world.student, rim, "auto", config.limits)


def test_gepa_progress_comes_from_its_callbacks_and_never_goes_back() -> None:
    world, config = ScriptedTaskWorld(), GepaConfig(budget=30, eval_mode="auto")
    splits = build_splits([], config.dataset, families=["arithmetic"])
    seen: list[tuple[float, str]] = []
    outcome = evolve_prompts(
        SEEDS,
        splits,
        _evaluator(world, config),
        reflection_lm(world.reflection, config),
        config,
        progress=lambda fraction, message: seen.append((fraction, message)),
    )
    assert outcome.decision.passed
    optimizing = [(f, m) for f, m in seen if m.startswith("optimizing: ")]
    assert optimizing and all(f <= 0.8 for f, _ in optimizing)
    assert "iteration 0, 12/30 metric calls, best validation score" in optimizing[0][1]
    assert any("iteration 1," in m for _, m in optimizing)
    assert optimizing[-1][1].endswith("best validation score 1.000")
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert seen[-1][1] == f"held-out evaluation {2 * len(splits.heldout)}/{2 * len(splits.heldout)}"


def test_a_failing_progress_report_stops_gepa_and_is_raised() -> None:
    world, config = ScriptedTaskWorld(), GepaConfig(budget=200, eval_mode="auto")
    splits = build_splits([], config.dataset, families=["arithmetic"])
    evaluator = _evaluator(world, config)

    def progress(fraction: float, message: str) -> None:
        raise RuntimeError("the job was ended")

    with pytest.raises(RuntimeError, match="the job was ended"):
        evolve_prompts(
            SEEDS,
            splits,
            evaluator,
            reflection_lm(world.reflection, config),
            config,
            progress=progress,
        )
    assert evaluator.calls == config.dataset.validation_size  # the seed's validation only


@dataclass
class OfflineGepaContext(GepaJobContext):
    """The GEPA context with production from the seeds instead of the prompts topic."""

    def production(self, agent_id: str) -> dict[str, PromptVersion]:
        return self.seed_prompts.snapshot(agent_id)

    def labels(self, agent_id: str) -> dict[tuple[str, str], PromptVersion]:
        return {}


def _context(world: ScriptedTaskWorld, store: FakeStore) -> OfflineGepaContext:
    return OfflineGepaContext(
        kafka_config={},
        connect_store=lambda: store,  # type: ignore[arg-type,return-value]
        student=world.student,
        teacher=world.student,
        reflection=world.reflection,
        rim=build_rim(load_rim_config(PROJECT_CONFIGS)),
        config=GepaConfig(budget=30, eval_mode="auto", canary_share=0.0),
        seed_prompts=StaticPrompts(SEEDS),
    )


def test_the_gepa_job_in_the_skeleton_publishes_its_prompt_with_the_report() -> None:
    producer = FakeProducer()
    trigger = RetrainTrigger(kind="gepa", agent_id="a", reason="t", params={"seed": "0"})
    reporter = JobReporter(producer, trigger, "w1", every_s=0)  # type: ignore[arg-type]
    run_gepa_job(trigger, reporter, _context(ScriptedTaskWorld(), FakeStore(arithmetic_traces())))
    reports = producer.reports()
    assert reports[0].message == "building datasets from the store"
    assert reports[1].message == (
        "optimizing student, student_demonstrations on 24 train / 12 validation examples"
        " (0 user edits), budget 30"
    )
    assert reports[1].metrics == {
        "train_examples": 24.0,
        "validation_examples": 12.0,
        "heldout_examples": 30.0,
    }
    assert any("best validation score" in r.message for r in reports)
    done = reports[-1]
    assert done.state == "SUCCEEDED" and done.message.startswith("published student v1: ")
    assert done.metrics["stored_traces"] == 30.0 and done.metrics["metric_calls"] >= 30
    (version, status) = producer.transactions[-1]
    assert isinstance(version, PromptVersion) and status == done
    assert "MAGIC" in version.text and version.source == "gepa" and version.parent_version == 0
    assert (version.job_id, version.trigger_id) == (done.job_id, trigger.trigger_id)
    assert version.heldout_reward == done.metrics["heldout_candidate_reward"]


def test_an_operators_prompt_faces_the_same_comparison() -> None:
    context = _context(ScriptedTaskWorld(), FakeStore([]))
    since = datetime.now(UTC) - timedelta(hours=1)
    better = {"student": "Reply with the number. MAGIC"}
    current, passed = gate_manual_prompts(context, "a", better, since, ["arithmetic"])
    assert current["student"].version == 0 and passed.passed, passed.reason
    _, refused = gate_manual_prompts(context, "a", {"student": "Guess."}, since, ["arithmetic"])
    assert not refused.passed
    with pytest.raises(ValueError, match="no held-out examples"):
        gate_manual_prompts(context, "a", better, since, [])
