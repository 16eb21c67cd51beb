"""Long-running workers, wired from settings: the reward stream (with the retrain policy), the
canary rollout controller, the ClickHouse sink and the learning-job workers (GEPA, GRPO, RIM
calibration), each serving its Prometheus metrics (``runtime/metrics.py``) when
ATLAS_METRICS_PORT is set."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path

from atlas import registry
from atlas.agent import Backends, load_agent_config, memory_role
from atlas.settings import Settings
from consumers.gepa_worker import GepaJobContext, run_gepa_job
from consumers.grpo_worker import GrpoJobContext, run_grpo_job
from consumers.rim_worker import RimJobContext, run_rim_job
from consumers.sink import ClickHouseSink, SinkStats
from consumers.trigger_worker import JobRunner, TriggerWorker
from rim.config import build_rim, load_rim_config
from rim.reward import Rim
from runtime.metrics import serving
from runtime.redaction import Redactor
from schemas.configfile import load_config
from schemas.models import JobKind
from schemas.topics import (
    ALERT_OBSERVATIONS,
    INTERACTIONS,
    MEMORY_CANDIDATES,
    POLICY_OBSERVATIONS,
    ROLLOUT_OBSERVATIONS,
)
from store.client import connect
from streams.alert_webhook import WebhookNotifier
from streams.alerts import AlertDetector
from streams.alerts_config import load_alerts_config
from streams.engine import StreamEngine
from streams.memory import MemoryProcessor
from streams.memory_config import load_memory_config
from streams.processor import RewardProcessor
from streams.retrain_policy import RetrainPolicy, RetrainPolicyConfig
from streams.rim_versions import RimVersions
from trainer.calibration import load_calibration_config
from trainer.gepa_config import load_gepa_config
from trainer.grpo_config import load_grpo_config


def build_settings_rim(settings: Settings) -> Rim:
    config = load_rim_config(settings.config_dir)
    if not config.needs_models:
        return build_rim(config)
    judge, arbiter = Backends(settings).judge_and_arbiter()
    return build_rim(config, judge, arbiter)


def topic_partitions(kafka_config: dict[str, str], topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient(kafka_config).list_topics(topic, timeout=15)
    partitions = metadata.topics[topic].partitions
    if not partitions:
        raise RuntimeError(f"topic {topic} does not exist: run `atlas up`")
    return len(partitions)


REWARDS_GROUP = "atlas-rewards"


def run_rewards_worker(settings: Settings, stop: threading.Event | None = None) -> None:
    """Run the reward stream (and the retrain policy, memory and alerts it feeds) until
    SIGTERM/SIGINT."""
    from streams.app import create_stream

    stop = stop or threading.Event()
    stop_on_signals(stop)
    lease = registry.claim(settings.home, "rewards", REWARDS_GROUP, settings.worker_id)
    kafka = settings.kafka_config("rewards")
    # each agent's published RIM calibration (atlas.prompts.v1, role rim), signature checked
    rim_versions = RimVersions(kafka, settings.codec(), settings.verifier()).start()
    processor = RewardProcessor(
        build_settings_rim(settings),
        pending_ttl_s=settings.pending_feedback_ttl_s,
        feedback_window_s=settings.feedback_window_s,
        redactor=Redactor.from_config_dir(settings.config_dir),
        rim_versions=rim_versions,
    )
    policy_config = load_config(settings.config_dir / "retrain_policy.yaml", RetrainPolicyConfig)
    memory_config = load_memory_config(settings.config_dir)
    alerts_config = load_alerts_config(settings.config_dir)
    webhook = None
    if alerts_config.enabled and alerts_config.webhook_url is not None:
        url = alerts_config.webhook_url.get_secret_value()
        webhook = WebhookNotifier(url, alerts_config.webhook_timeout_s)
    engine = create_stream(
        kafka,
        processor,
        codec=settings.codec(),
        policy=RetrainPolicy(policy_config) if policy_config.enabled else None,
        memory=MemoryProcessor(memory_config) if memory_config.enabled else None,
        alerts=AlertDetector(alerts_config) if alerts_config.enabled else None,
        alert_webhook=webhook,
        retrain_on_alert=policy_config if alerts_config.retrain_on_reward_drop else None,
        group_id=REWARDS_GROUP,
        batch_size=settings.rewards_batch_size,
        linger_s=settings.rewards_linger_s,
    )
    engine.ensure_topics(
        topic_partitions(kafka, INTERACTIONS),
        [POLICY_OBSERVATIONS, MEMORY_CANDIDATES, ROLLOUT_OBSERVATIONS, ALERT_OBSERVATIONS],
    )
    try:
        with serve_metrics(settings):
            run_engine(engine, stop, lease, "rewards")
    finally:
        if webhook is not None:
            webhook.close()
        rim_versions.close()
        lease.release()


def run_engine(
    engine: StreamEngine, stop: threading.Event, lease: registry.WorkerLease, kind: str
) -> None:
    """Run a stream worker's engine until ``stop``, saying when it is ready."""
    log = logging.getLogger(__name__)
    engine.run(
        stop,
        ready=lambda: log.info(
            "%s worker %s (pid %d) ready", kind, lease.worker_id, lease.record.pid
        ),
    )


ROLLOUTS_GROUP = "atlas-rollouts"


def run_rollouts_worker(settings: Settings, stop: threading.Event | None = None) -> None:
    """Run the canary rollout controller (streams/rollout_stream.py) until SIGTERM/SIGINT."""
    from schemas.codec import RegistryUnavailable
    from streams.rollout_config import load_rollout_config
    from streams.rollout_stream import CanaryFollower, CanaryNotFollowed, rollout_stream

    stop = stop or threading.Event()
    stop_on_signals(stop)
    config = load_rollout_config(settings.config_dir)
    lease = registry.claim(settings.home, "rollouts", ROLLOUTS_GROUP, settings.worker_id)
    kafka = settings.kafka_config("learner")
    codec = settings.codec()
    canaries = CanaryFollower(kafka, codec, settings.verifier()).start()
    try:
        checkpoints = CanaryFollower(kafka, codec, settings.verifier(), "checkpoint").start()
    except BaseException:
        canaries.close()
        raise
    book, handler = rollout_stream(config, codec, canaries, settings.signer(), checkpoints)
    engine = StreamEngine(
        kafka,
        ROLLOUTS_GROUP,
        {ROLLOUT_OBSERVATIONS: handler},
        [book],
        retry_on=(RegistryUnavailable, CanaryNotFollowed),
        worker="rollouts",
    )
    engine.ensure_topics(topic_partitions(kafka, INTERACTIONS), [ROLLOUT_OBSERVATIONS])
    try:
        with serve_metrics(settings):
            run_engine(engine, stop, lease, "rollouts")
    finally:
        canaries.close()
        checkpoints.close()
        lease.release()


SINK_GROUP = "atlas-sink"


def run_sink_worker(settings: Settings, stop: threading.Event | None = None) -> SinkStats:
    """Run the ClickHouse sink until SIGTERM/SIGINT (or ``stop``)."""
    stop = stop or threading.Event()
    stop_on_signals(stop)
    lease = registry.claim(settings.home, "sink", SINK_GROUP, settings.worker_id)
    url = settings.store()
    sink = ClickHouseSink(
        settings.kafka_config("sink"),
        lambda: connect(url),
        cluster=settings.clickhouse_cluster,
        group_id=SINK_GROUP,
        batch_size=settings.sink_batch_size,
        linger_s=settings.sink_linger_s,
        codec=settings.codec(),
        redactor=Redactor.from_config_dir(settings.config_dir),
    )
    logging.getLogger(__name__).info(
        "sink %s (pid %d): Kafka %s -> %s",
        lease.worker_id,
        lease.record.pid,
        settings.bootstrap(),
        url,
    )
    try:
        with serve_metrics(settings):
            return sink.run(stop)
    finally:
        lease.release()


def serve_metrics(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """This process's Prometheus metrics, served while the block runs on ATLAS_METRICS_HOST
    and ATLAS_METRICS_PORT (nothing at port 0)."""
    return serving(settings.metrics_host, settings.metrics_port)


def stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())


def gepa_job_context(settings: Settings) -> GepaJobContext:
    config = load_agent_config(settings.config_dir)
    backends = Backends(settings)
    student, teacher = backends.student_and_teacher()
    url = settings.store()
    return GepaJobContext(
        kafka_config=settings.kafka_config("learner"),
        connect_store=lambda: connect(url),
        student=student,
        teacher=teacher,
        reflection=None
        if settings.reflection_backend == "none"
        else backends.get(settings.reflection_backend, settings.reflection_model),
        rim=build_settings_rim(settings),
        config=load_gepa_config(settings.config_dir),
        seed_prompts=config.seeds(),
        memory_role=memory_role(settings),
        run_root=settings.home / "jobs",
        codec=settings.codec(),
    )


def run_trigger_worker(
    settings: Settings, kind: JobKind, stop: threading.Event | None = None
) -> int:
    """Run ``kind`` jobs from triggers until SIGTERM/SIGINT (or ``stop``); returns jobs run."""
    stop = stop or threading.Event()
    stop_on_signals(stop)
    if kind == "gepa":
        gepa = gepa_job_context(settings)
        run_job: JobRunner = lambda trigger, reporter: run_gepa_job(trigger, reporter, gepa)  # noqa: E731
    elif kind == "rim":
        rim = rim_job_context(settings)
        run_job = lambda trigger, reporter: run_rim_job(trigger, reporter, rim)  # noqa: E731
    else:
        grpo = grpo_job_context(settings)
        run_job = lambda trigger, reporter: run_grpo_job(trigger, reporter, grpo)  # noqa: E731
    group = f"atlas-{kind}"
    lease = registry.claim(settings.home, kind, group, settings.worker_id)
    worker = TriggerWorker(
        kind,
        settings.kafka_config("learner"),
        run_job,
        lease.worker_id,
        settings.codec(),
        group,
        settings.signer(),
    )
    try:
        with serve_metrics(settings):
            worker.run(stop)
    finally:
        lease.release()
    return worker.jobs_run


def rim_job_context(settings: Settings) -> RimJobContext:
    url = settings.store()
    return RimJobContext(
        kafka_config=settings.kafka_config("learner"),
        connect_store=lambda: connect(url),
        rim_config=load_rim_config(settings.config_dir),
        config=load_calibration_config(settings.config_dir),
        codec=settings.codec(),
    )


def grpo_job_context(settings: Settings) -> GrpoJobContext:
    from runtime.backends.local import SMOLLM2_NAME, default_model_dir

    backends = Backends(settings)
    student, _ = backends.student_and_teacher()
    base = (
        Path(settings.teacher_model)
        if settings.teacher_model
        else default_model_dir(settings.cache_dir)
    )
    url = settings.store()
    return GrpoJobContext(
        kafka_config=settings.kafka_config("learner"),
        connect_store=lambda: connect(url),
        student=student,
        rim=build_settings_rim(settings),
        config=load_grpo_config(settings.config_dir),
        config_dir=settings.config_dir,
        seed_prompts=load_agent_config(settings.config_dir).seeds(),
        base_model_dir=base,
        base_model_name=base.name if settings.teacher_model else SMOLLM2_NAME,
        checkpoint_root=settings.checkpoint_dir or settings.home / "checkpoints",
        run_root=settings.home / "jobs",
        codec=settings.codec(),
    )


def worker_log(settings: Settings, name: str) -> Path:
    return settings.home / "workers" / f"{name}.log"
