"""A worker that runs one kind of retrain job per trigger, at most once.

* The trigger's offset is committed right after the job is reported QUEUED, before any work:
  a crash or a rebalance can never start the same job twice.
* The job runs on a thread while the main loop keeps polling (with the partitions paused), so
  a job of any length keeps the worker's consumer-group membership.
* On start the worker fails the jobs it left unfinished when it died (same worker id): a job
  is never silently lost, and never resumed behind the operator's back.
* On SIGTERM a running job is reported FAILED before the worker exits; whatever it would have
  published afterwards is refused (the reporter is closed).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import traceback
from collections.abc import Callable

from confluent_kafka import Consumer, Message

from consumers.jobs import (
    JobAborted,
    JobReporter,
    TransactionalProducer,
    job_id_for,
    orphaned_jobs,
    read_job_states,
)
from consumers.kafka_plumbing import hold_new_partitions
from runtime.metrics import JOBS_ACTIVE, ConsumerLag, WorkerMetrics
from schemas.codec import AvroCodec, DecodeError
from schemas.models import JobKind, JobStatus, RetrainTrigger
from schemas.signing import Signer
from schemas.topics import TRIGGERS

log = logging.getLogger(__name__)
JobRunner = Callable[[RetrainTrigger, JobReporter], None]


class TriggerWorker:
    def __init__(
        self,
        kind: JobKind,
        kafka_config: dict[str, str],
        run_job: JobRunner,
        worker_id: str,
        codec: AvroCodec | None = None,
        group_id: str | None = None,
        signer: Signer | None = None,
    ):
        self.kind = kind
        self.signer = signer
        self.group_id = group_id or f"atlas-{kind}"
        self.kafka_config = kafka_config
        self.run_job = run_job
        self.worker_id = worker_id
        self.codec = codec or AvroCodec()
        self.jobs_run = 0
        self.metrics = WorkerMetrics(kind)
        self._known: dict[str, JobStatus] = {}

    def run(self, stop: threading.Event) -> None:
        producer = TransactionalProducer(
            self.kafka_config, f"atlas-{self.kind}-{self.worker_id}", self.codec, self.signer
        )
        self._known = read_job_states(self.kafka_config, self.codec)
        for orphan in orphaned_jobs(self._known, self.kind, self.worker_id):
            trigger = RetrainTrigger(
                trigger_id=orphan.trigger_id, kind=orphan.kind, agent_id=orphan.agent_id, reason=""
            )
            reporter = JobReporter(producer, trigger, self.worker_id, seq=orphan.seq)
            reporter.state = orphan.state
            failed = reporter.report(
                "FAILED", f"worker {self.worker_id} restarted while the job was {orphan.state}"
            )
            self._known[failed.job_id] = failed
            log.warning(
                "job %s: marked FAILED (left %s by a dead worker)", orphan.job_id, orphan.state
            )
        consumer = Consumer(
            {
                **self.kafka_config,
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        consumer.subscribe([TRIGGERS])
        log.info("%s worker %s waiting for triggers", self.kind, self.worker_id)
        lag = ConsumerLag(self.kafka_config, self.group_id).start()
        try:
            while not stop.is_set():
                message = consumer.poll(0.5)
                lag.watch(consumer)
                if message is None or message.error() is not None:
                    continue
                self.metrics.taken((TRIGGERS,))
                trigger = self._decode(message)
                if trigger is not None and trigger.kind == self.kind:
                    self._start(trigger, message, consumer, producer, stop)
                else:
                    consumer.commit(message, asynchronous=False)
        finally:
            lag.close()
            consumer.close()

    def _decode(self, message: Message) -> RetrainTrigger | None:
        """The trigger, or None for a message that is not one (the sink, which owns the
        triggers topic, dead-letters it)."""
        try:
            return self.codec.decode(message.value() or b"", RetrainTrigger)
        except DecodeError as exc:
            log.error(
                "skipped an undecodable trigger at %s[%d]@%d: %s",
                message.topic(),
                message.partition(),
                message.offset(),
                exc,
            )
            return None

    def _start(
        self,
        trigger: RetrainTrigger,
        message: Message,
        consumer: Consumer,
        producer: TransactionalProducer,
        stop: threading.Event,
    ) -> None:
        job_id = job_id_for(trigger)
        if job_id in self._known:
            log.info("trigger %s already ran as job %s: skipped", trigger.trigger_id, job_id)
            consumer.commit(message, asynchronous=False)
            return
        reporter = JobReporter(producer, trigger, self.worker_id)
        self._known[job_id] = reporter.report("QUEUED", f"trigger: {trigger.reason}")
        consumer.commit(message, asynchronous=False)
        log.info("job %s started for trigger %s", job_id, trigger.trigger_id)

        def work() -> None:
            try:
                self.run_job(trigger, reporter)
            except JobAborted:
                pass
            except Exception as exc:
                log.error("job %s failed:\n%s", job_id, traceback.format_exc())
                with contextlib.suppress(JobAborted):
                    reporter.report("FAILED", f"{type(exc).__name__}: {exc}"[:2000])

        thread = threading.Thread(target=work, name=f"job-{job_id}", daemon=True)
        with JOBS_ACTIVE.labels(self.kind).track_inprogress():
            thread.start()
            consumer.pause(consumer.assignment())
            while thread.is_alive():
                if stop.is_set():
                    with contextlib.suppress(JobAborted):
                        reporter.report("FAILED", f"worker {self.worker_id} stopped during the job")
                    break
                hold_new_partitions(consumer, 0.2)
                thread.join(0.5)
        consumer.resume(consumer.assignment())
        self.jobs_run += 1
