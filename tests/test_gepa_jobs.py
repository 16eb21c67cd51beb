"""GEPA jobs end to end on the real broker and store: operator trigger -> job reports -> gate
-> published prompt with lineage -> a running agent carries it; an overfit candidate is
rejected and nothing is published; rollback; the operator CLI over the stored jobs.

The models here are scripted (a student that improves only with a keyword in its prompt, a
reflection model that proposes it) so the outcome is known; the offline model's run is in
test_gepa_offline.py."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from atlas.agent import load_agent_config
from atlas.cli import app
from atlas.settings import PROJECT_CONFIGS, Settings
from consumers.gepa_worker import GepaJobContext, run_gepa_job
from consumers.jobs import TERMINAL, read_job_reports, read_job_states
from consumers.sink import ClickHouseSink
from rim.config import build_rim, load_rim_config
from runtime.core import Runtime
from runtime.prompts import PromptSubscriber, StaticPrompts
from runtime.tasks import generate
from schemas.codec import AvroCodec
from schemas.models import JobStatus, PromptVersion
from store.client import connect
from store.queries import job_reports, prompt_history
from store.writer import StoreWriter
from tests.factories import interaction, scored
from tests.fakes import ScriptedTaskWorld
from tests.workers import eventually, start_trigger_worker
from trainer.datasets import DatasetConfig, split_of
from trainer.gepa_config import GepaConfig

SEEDS = {"student": "You are a helpful assistant.", "teacher": "You are a reviewer."}
runner = CliRunner()


def _cli(settings: Settings, *args: str) -> str:
    result = runner.invoke(
        app, list(args), env={"ATLAS_HOME": str(settings.home), "COLUMNS": "250"}
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def sink(stack_settings: Settings) -> Iterator[None]:
    url = stack_settings.store()
    stop = threading.Event()
    worker = ClickHouseSink(stack_settings.kafka_config(), lambda: connect(url))
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(30)


def _store_traces(settings: Settings, agent: str, n: int = 30) -> None:
    rng = random.Random(3)
    now = datetime.now(UTC)
    traces = []
    for task in generate("arithmetic", "test", n, seed=5):  # traffic on the built-in task
        event = interaction(rng, agent, at=now).model_copy(
            update={"task_id": task.task_id, "task_input": task.input, "reference": task.reference}
        )
        traces.append(scored(event, rng))
    StoreWriter(connect(settings.store())).write(traces)


def _start_worker(
    settings: Settings, world: ScriptedTaskWorld, config: GepaConfig
) -> tuple[threading.Event, threading.Thread]:
    kafka = settings.kafka_config()
    url = settings.store()
    context = GepaJobContext(
        kafka_config=kafka,
        connect_store=lambda: connect(url),
        student=world.student,
        teacher=world.student,
        reflection=world.reflection,
        rim=build_rim(load_rim_config(PROJECT_CONFIGS)),
        config=config,
        seed_prompts=StaticPrompts(SEEDS),
    )
    return start_trigger_worker(
        kafka, "gepa", lambda trigger, reporter: run_gepa_job(trigger, reporter, context)
    )


def _finished_job(
    settings: Settings, agent: str, timeout: float = 120, exclude: set[str] | None = None
) -> JobStatus:
    """The agent's finished job (not one of ``exclude``)."""
    codec, exclude = AvroCodec(), exclude or set()

    def done() -> JobStatus | None:
        for state in read_job_states(settings.kafka_config(), codec).values():
            if state.agent_id == agent and state.state in TERMINAL and state.job_id not in exclude:
                return state
        return None

    return eventually(done, timeout, f"a finished job for {agent}", interval=0.5)


def _published(settings: Settings, agent: str) -> list[PromptVersion]:
    with PromptSubscriber(settings.kafka_config(), StaticPrompts(SEEDS)).start() as prompts:
        return [v for v in prompts.snapshot(agent).values() if v.version > 0]


def test_operator_trigger_to_published_prompt_in_a_running_agent(
    stack_settings: Settings, sink: None
) -> None:
    agent = f"gepa-{uuid.uuid4().hex[:8]}"
    _store_traces(stack_settings, agent)
    world = ScriptedTaskWorld()
    stop, thread = _start_worker(
        stack_settings, world, GepaConfig(budget=30, eval_mode="auto", canary_share=0.0)
    )
    kafka = stack_settings.kafka_config()
    live = PromptSubscriber(kafka, StaticPrompts(SEEDS)).start()
    running_agent = Runtime(agent, world.student, world.student, live)
    task = generate("arithmetic", "test", 1)[0]
    try:
        assert running_agent.run(task, "auto").prompt_versions[1].version == 0
        trigger_id = _cli(
            stack_settings, "retrain", "gepa", "--agent", agent, "--since", "1h", "--budget", "30"
        ).strip()
        job = _finished_job(stack_settings, agent)
    finally:
        stop.set()
        thread.join(30)
    assert job.state == "SUCCEEDED", job.message
    assert job.trigger_id == trigger_id and job.result_version == 1
    assert job.metrics["heldout_candidate_reward"] > job.metrics["heldout_current_reward"]
    assert job.metrics["metric_calls"] >= 30 and job.metrics["heldout_n"] == 30

    reports = [r for r in read_job_reports(kafka, AvroCodec()) if r.job_id == job.job_id]
    assert [r.seq for r in reports] == list(range(1, len(reports) + 1))
    assert reports[0].state == "QUEUED" and reports[-1].state == "SUCCEEDED"
    progress = [r.progress for r in reports if r.state == "RUNNING" and r.progress]
    assert progress and progress == sorted(progress)

    assert live.wait_for(agent, "student", 1, timeout=30)
    event = running_agent.run(task, "auto")
    assert {(r.role, r.version) for r in event.prompt_versions} == {("student", 1), ("teacher", 0)}
    assert event.final_answer == task.reference  # the new prompt works in the live agent
    live.close()

    (version,) = _published(stack_settings, agent)
    assert version.source == "gepa" and version.parent_version == 0
    assert (version.job_id, version.trigger_id) == (job.job_id, trigger_id)
    assert version.window_start and version.window_end and version.non_degradation == 1.0
    assert version.heldout_reward == job.metrics["heldout_candidate_reward"]

    store = connect(stack_settings.store())
    eventually(
        lambda: prompt_history(store, agent), 30, "the prompt version in the store", interval=0.5
    )
    eventually(
        lambda: any(r.state == "SUCCEEDED" for r in job_reports(store, job.job_id)),
        30,
        "the job's reports in the store",
        interval=0.5,
    )
    listing = _cli(stack_settings, "jobs", "--agent", agent)
    assert job.job_id in listing and "SUCCEEDED" in listing
    shown = _cli(stack_settings, "jobs", "show", job.job_id)
    assert "QUEUED" in shown and "heldout_candidate_reward" in shown
    assert trigger_id in shown and f"published {agent}/student v1 (parent v0)" in shown
    assert "gepa" in _cli(stack_settings, "prompts", "list", "--agent", agent)


def test_an_overfit_candidate_is_rejected_and_nothing_is_published(
    stack_settings: Settings,
) -> None:
    agent = f"overfit-{uuid.uuid4().hex[:8]}"
    _store_traces(stack_settings, agent)
    dataset = DatasetConfig()
    world = ScriptedTaskWorld(fails_with_keyword=lambda text: split_of(text, dataset) == "heldout")
    config = GepaConfig(budget=30, eval_mode="auto", dataset=dataset)
    stop, thread = _start_worker(stack_settings, world, config)
    try:
        _cli(stack_settings, "retrain", "gepa", "--agent", agent, "--since", "1h")
        job = _finished_job(stack_settings, agent)
    finally:
        stop.set()
        thread.join(30)
    assert job.state == "REJECTED"
    assert job.metrics["validation_best"] == 1.0  # it looked perfect to the optimizer
    assert job.metrics["heldout_candidate_reward"] < job.metrics["heldout_current_reward"]
    assert "non-degradation" in job.message and job.result_version is None
    assert _published(stack_settings, agent) == []


def test_rollback_restores_the_previous_text_under_a_new_version(
    stack_settings: Settings, sink: None
) -> None:
    agent = f"rollback-{uuid.uuid4().hex[:8]}"
    kafka = stack_settings.kafka_config()
    store = connect(stack_settings.store())
    for text in ("first manual teacher prompt", "second manual teacher prompt"):
        _cli(stack_settings, "prompts", "set", "--agent", agent, "--role", "teacher",
             "--text", text, "--force")  # fmt: skip
    eventually(
        lambda: len(prompt_history(store, agent, "teacher")) == 2, 30, "two versions", interval=0.5
    )
    with PromptSubscriber(kafka, StaticPrompts(SEEDS)).start() as live:
        assert live.wait_for(agent, "teacher", 2)
        output = _cli(stack_settings, "prompts", "rollback", "--agent", agent, "--role", "teacher")
        assert "text of v1 restored" in output
        assert live.wait_for(agent, "teacher", 3)
        current = live.snapshot(agent)["teacher"]
        assert (current.text, current.source, current.parent_version) == (
            "first manual teacher prompt",
            "rollback",
            2,
        )
        _cli(stack_settings, "prompts", "rollback", "--agent", agent, "--role", "teacher",
             "--to", "0")  # fmt: skip
        assert live.wait_for(agent, "teacher", 4)
        seed = load_agent_config(PROJECT_CONFIGS).prompts["teacher"]
        assert live.snapshot(agent)["teacher"].text == seed
    shown = _cli(stack_settings, "prompts", "show", "--agent", agent, "--role", "teacher",
                 "--version", "2")  # fmt: skip
    assert "second manual teacher prompt" in shown


def test_bad_operator_input_gets_a_clear_error(stack_settings: Settings) -> None:
    env = {"ATLAS_HOME": str(stack_settings.home)}
    bad_since = runner.invoke(app, ["retrain", "gepa", "--agent", "a", "--since", "soon"], env=env)
    assert bad_since.exit_code == 2 and "--since" in bad_since.output
    bad_param = runner.invoke(app, ["retrain", "gepa", "--agent", "a", "--param", "x"], env=env)
    assert bad_param.exit_code == 2 and "NAME=VALUE" in bad_param.output
    bad_role = runner.invoke(app, ["prompts", "show", "--agent", "a", "--role", "boss"], env=env)
    assert bad_role.exit_code == 2 and "student or teacher" in bad_role.output
    no_parent = runner.invoke(app, ["prompts", "rollback", "--agent", "nobody"], env=env)
    assert no_parent.exit_code == 2 and "no parent" in no_parent.output
    missing = runner.invoke(app, ["jobs", "show", "no-such-job"], env=env)
    assert missing.exit_code == 2 and "no job" in missing.output
